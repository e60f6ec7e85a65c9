"""docker/: the compose stack, the images and the docker MLproject, checked without a Docker engine.

No engine runs here, so compose.yaml is read as YAML and checked for what the stack relies on (services, health
checks, start order, named volumes, every secret from docker/.env); when the `docker compose` plugin is present
its own `config` validation runs as well. The server it describes is the `team_server` of the server tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")  # ${NAME}, ${NAME:-default}, ${NAME:?message}


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def example_env() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.mark.unit
def test_services_wait_for_healthy_dependencies():
    services = compose()["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "mlflow", "train"}
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert services["create-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "create-bucket": {"condition": "service_completed_successfully"}}
    assert services["train"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert services["train"]["profiles"] == ["train"]  # on demand, not part of `up`


@pytest.mark.unit
def test_mlflow_server_uses_postgres_proxied_minio_and_basic_auth():
    mlflow = compose()["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert command.startswith("mlflow server ") and "--app-name=basic-auth" in command
    assert "--backend-store-uri=postgresql+psycopg2://" in command and "@postgres:5432/" in command
    assert "--artifacts-destination=s3://" in command  # proxied: trainers never hold MinIO keys
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert "./basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in mlflow["volumes"]
    assert mlflow["build"] == {"context": "..", "dockerfile": "docker/Dockerfile", "target": "server"}
    auth = (DOCKER / "basic_auth.ini").read_text()
    assert "admin_password" not in auth.replace("# ", "")  # the password comes from .env
    assert "database_uri = sqlite:////var/lib/mlflow-auth/" in auth  # on the named volume


@pytest.mark.unit
def test_state_lives_in_named_volumes():
    stack = compose()
    declared = set(stack["volumes"])
    assert declared == {"postgres-data", "minio-data", "mlflow-auth"}
    used = {volume.split(":")[0] for service in stack["services"].values() for volume in service.get("volumes", [])}
    assert declared <= used


@pytest.mark.unit
def test_every_secret_comes_from_the_env_file_and_none_is_written_in():
    text = (DOCKER / "compose.yaml").read_text()
    referenced = set(VARIABLE.findall(text))
    example = example_env()
    assert referenced <= set(example), referenced - set(example)
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
                   "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_PASSWORD"):
        assert re.search(r"\$\{" + secret + r":\?", text), f"{secret} must be required (${{{secret}:?...}})"
        assert example[secret].startswith("change-me")
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


@pytest.mark.e2e
def test_compose_config_validates_when_the_plugin_is_installed(tmp_path):
    """`docker compose config` (the brief's check) runs where the compose plugin exists; here the YAML tests above
    stand in for it. The command is given an env file made from .env.example."""
    docker = shutil.which("docker")
    has_plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if has_plugin:
        env_file = tmp_path / ".env"
        env_file.write_text((DOCKER / ".env.example").read_text())
        result = subprocess.run([docker, "compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file),
                                 "config", "--quiet"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert yaml.safe_load((DOCKER / "compose.yaml").read_text())["name"] == "rain-mlflow"


@pytest.mark.unit
def test_training_image_installs_torch_from_the_cuda_index():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+ AS server$", dockerfile, flags=re.M)
    assert re.search(r"^FROM \S+ AS train$", dockerfile, flags=re.M)
    index = re.search(r"^ARG TORCH_INDEX=(\S+)$", dockerfile, flags=re.M).group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index)
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in dockerfile
    assert 'ENTRYPOINT ["rain-mlflow"]' in dockerfile
    assert compose()["services"]["train"]["image"] == "rain-mlflow:cuda"


@pytest.mark.unit
def test_docker_mlproject_runs_the_training_image():
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(DOCKER))
    assert project.docker_env["image"] == compose()["services"]["train"]["image"]
    assert set(project._entry_points) == {"main", "train", "test", "compare", "promote"}
    for name, entry in project._entry_points.items():
        assert entry.command == f"rain-mlflow {name}"
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(project.docker_env["environment"])
