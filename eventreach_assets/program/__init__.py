from eventreach_assets.program.config import (
    ProgramConfig,
    ProgramConfigError,
    default_program,
    load_program,
    parse_program,
)

__all__ = ["ProgramConfig", "ProgramConfigError", "default_program", "load_program", "parse_program"]
