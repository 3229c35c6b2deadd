"""Where a stack keeps PostgreSQL's cluster."""

import shutil
import tempfile
from pathlib import Path

import pytest

from streamcart.stack.layout import StackLayout


@pytest.fixture
def open_folder():
    folder = Path(tempfile.mkdtemp(dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_home_the_postgres_user_can_reach_keeps_its_cluster_inside(open_folder):
    assert StackLayout(open_folder / "home").postgres_dir == open_folder / "home" / "data" / "postgres"


def test_a_home_below_a_closed_folder_keeps_its_cluster_in_var_tmp_named_after_the_home(tmp_path):
    tmp_path.chmod(0o700)
    one, two = StackLayout(tmp_path / "a"), StackLayout(tmp_path / "b")
    assert one.postgres_dir.parent == Path("/var/tmp")
    assert one.postgres_dir != two.postgres_dir
    assert one.postgres_dir == StackLayout(tmp_path / "a").postgres_dir
