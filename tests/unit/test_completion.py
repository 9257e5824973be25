"""Shell completion through Typer's own mechanism: scripts for bash, zsh and fish, socket paths for -s and -a."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from support.shell import qmpctl_on_path, shell_env


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder a user completes in: two sockets, a subfolder, and files that are not sockets."""
    place = tmp_path / "vms"
    place.mkdir()
    for name in ("web.sock", "db.qga"):
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(place / name))
    (place / "sub").mkdir()
    (place / "notes.txt").write_text("not a socket\n")
    (place / "web.qcow2").write_bytes(b"QFI\xfb")
    return place


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return shell_env(qmpctl_on_path(tmp_path / "bin"), home)


def complete_bash(env: dict[str, str], words: str) -> list[str]:
    """What Typer's bash completion protocol answers for the command line ``words`` (cursor on the last word)."""
    proc = subprocess.run(["qmpctl"], env={**env, "_QMPCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.parametrize("words", ["qmpctl status -s", "qmpctl backup --qmp", "qmpctl agent ping -a",
                                   "qmpctl agent exec --agent"])
def test_target_options_complete_sockets_and_folders_only(env, folder, words):
    assert complete_bash(env, f"{words} {folder}/") == [f"{folder}/db.qga", f"{folder}/sub/", f"{folder}/web.sock"]


def test_a_typed_prefix_narrows_the_choice(env, folder):
    assert complete_bash(env, f"qmpctl status -s {folder}/w") == [f"{folder}/web.sock"]
    assert complete_bash(env, f"qmpctl status -s {folder}/nothing") == []


def test_commands_complete_too(env):
    assert "agent" in complete_bash(env, "qmpctl ag")
    assert set(complete_bash(env, "qmpctl agent ex")) == {"exec", "exec-status"}


def test_the_bash_script_completes_in_a_real_bash(env, folder):
    """Source what --show-completion prints into bash, press TAB (call the function), read COMPREPLY."""
    script = subprocess.run(["qmpctl", "--show-completion", "bash"], env=env, capture_output=True, text=True,
                            check=True).stdout
    shell = f"""{script}
COMP_WORDS=(qmpctl status -s {folder}/we)
COMP_CWORD=3
_qmpctl_completion qmpctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{folder}/web.sock"]


def in_shell(env: dict[str, str], shell: str, command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``command`` from a shell called ``shell``: completion recognises the shell qmpctl runs in.

    zsh and fish are not installed here, so a copy of dash under their name
    stands in: the recognition goes by the parent process's name.
    """
    fake = tmp_path / "shells" / shell
    fake.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/dash", fake)
    # "; true" keeps the shell from replacing itself with the command, so it stays qmpctl's parent.
    return subprocess.run([str(fake), "-c", f"{command}; true"], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_of_the_shell_it_runs_in(env, shell, tmp_path):
    proc = in_shell(env, shell, "qmpctl --show-completion", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"_QMPCTL_COMPLETE=complete_{shell}" in proc.stdout


@pytest.mark.parametrize("shell, script, rc, loads", [
    ("bash", ".bash_completions/qmpctl.sh", ".bashrc", "source '~/.bash_completions/qmpctl.sh'"),
    ("zsh", ".zfunc/_qmpctl", ".zshrc", "fpath+=~/.zfunc"),
    ("fish", ".config/fish/completions/qmpctl.fish", None, None),  # fish loads that folder by itself
])
def test_install_completion_writes_where_the_readme_says(env, shell, script, rc, loads, tmp_path):
    home = Path(env["HOME"])
    proc = in_shell(env, shell, "qmpctl --install-completion", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"_QMPCTL_COMPLETE=complete_{shell}" in (home / script).read_text()
    if rc:
        assert loads.replace("~", str(home)) in (home / rc).read_text().replace("~", str(home))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_installed_bash_completion_is_loaded_by_a_new_interactive_shell(env):
    """After --install-completion bash, a new interactive bash has the completion function registered."""
    subprocess.run(["bash", "-c", "qmpctl --install-completion; true"], env=env, capture_output=True, check=True)
    proc = subprocess.run(["bash", "-i", "-c", "complete -p qmpctl"], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30)
    assert "_qmpctl_completion" in proc.stdout, proc
