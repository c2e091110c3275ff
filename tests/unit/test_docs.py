"""The docs are tested: every fenced sample in README.md and docs/ is exercised, every relative link resolves.

- ```yaml with Istio documents: `vmesh validate` against a copy of the Bookinfo inventory (or the own-VMs one after
  ``<!-- inventory: own-vms -->``), the sample applied after the inventory's own mesh directory, as
  `vmesh validate --mesh DIR --mesh FILE` does. ``<!-- expect-error: TEXT -->`` above a block: it must fail with TEXT.
- ```yaml inventory (hosts.yml, group_vars): only documented vmesh_* variables, role options and ansible_* names,
  and the inventory must compile (`vmesh validate`). A playbook: its imports and roles exist in the collection.
- ```sh / ```bash / ```console: each command is real (a playbook of the collection, a vmesh subcommand and its
  options, a Makefile target, a well-formed ansible-galaxy line) or its program is on ALLOWED.
- ```ini: parses, and says what the checkout's ansible.cfg says. ```text is output; after
  ``<!-- output-of: COMMAND -->`` it must be that command's output (COLUMNS=100).
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BIN = Path(sys.executable).parent
INVENTORIES = {"bookinfo": ROOT / "examples" / "bookinfo" / "inventory", "own-vms": ROOT / "examples" / "own-vms"}
LANGUAGES = {"yaml", "sh", "bash", "console", "ini", "text"}
# Programs a sample may run besides vmesh, ansible-playbook, ansible-galaxy and make (checked one by one).
ALLOWED = {"curl", "ssh", "git", "cd", "rm", "cp", "grep", "sort", "uniq", "sudo", "openssl", "pip", "pip3", "pytest",
           "ansible-inventory", "ansible-doc", "ansible-vault", ".", "source"}
# ansible-playbook options that take a value
PLAYBOOK_VALUE_OPTIONS = {"-i", "--inventory", "-e", "--extra-vars", "-l", "--limit", "-t", "--tags", "--skip-tags",
                          "-u", "--user", "-f", "--forks", "--vault-password-file"}
ENV = {**os.environ, "COLUMNS": "100", "ANSIBLE_NOCOLOR": "1"}

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARK = re.compile(r"^\s*<!--\s*([a-z-]+):\s*(.*?)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    marks: tuple[tuple[str, str], ...]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def mark(self, name: str, default: str | None = None) -> str | None:
        return dict(self.marks).get(name, default)


def blocks_of(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        marks, j = [], i - 1
        while j >= 0 and MARK.match(lines[j]):
            marks.append(MARK.match(lines[j]).groups())
            j -= 1
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start}: the code block is never closed"
        yield Block(page, start, lang, "\n".join(body) + "\n", tuple(marks))
        i += 1


BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def blocks(*langs: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in BLOCKS if b.lang in langs]


def tool(name: str) -> str:
    beside = BIN / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed"
    return found


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool(argv[0]), *argv[1:]], capture_output=True, text=True, env=ENV, cwd=cwd or ROOT,
                          timeout=300, check=False)


def without_fences(page: Path) -> str:
    text, out, inside = page.read_text(encoding="utf-8"), [], False
    for line in text.splitlines():
        if FENCE.match(line) or (inside and re.match(r"^\s*```\s*$", line)):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


# --- what the code says there is ----------------------------------------------------------------------------

@functools.cache
def role_options() -> dict[str, set[str]]:
    """{role: option names of all its entry points}, from roles/*/meta/argument_specs.yml."""
    out = {}
    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        entry_points = yaml.safe_load(spec.read_text())["argument_specs"]
        out[spec.parent.parent.name] = {name for ep in entry_points.values() for name in ep.get("options", {})}
    return out


@functools.cache
def documented_variables() -> set[str]:
    return set(re.findall(r"`(vmesh_[a-z0-9_]+)`", (DOCS / "reference" / "inventory.md").read_text()))


@functools.cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_-]+):", (ROOT / "Makefile").read_text(), re.M))


@functools.cache
def help_text(*argv: str) -> str:
    proc = run(list(argv) + ["--help"])
    assert proc.returncode == 0, f"{' '.join(argv)} --help failed: {proc.stderr}"
    return proc.stdout


def has_option(help_: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_) is not None


# --- inventories to check samples against ---------------------------------------------------------------------

def host_names(data: Any) -> set[str]:
    """Every host named under a `hosts:` mapping of an inventory in YAML."""
    names: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "hosts" and isinstance(value, dict):
                names |= set(value)
            names |= host_names(value)
    return names


def inventory_copy(name: str, dest: Path) -> Path:
    """A copy of an example inventory without the lab's, the CA's and the rollouts' files, with addresses."""
    inventory = dest / name
    shutil.copytree(INVENTORIES[name], inventory, ignore=shutil.ignore_patterns("lab-hosts.yml", "ca", "rollouts"))
    give_addresses(inventory)
    return inventory


def give_addresses(inventory: Path) -> None:
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    lab = {"all": {"hosts": {h: {"ansible_host": f"10.99.0.{i + 10}"} for i, h in enumerate(sorted(host_names(hosts)))}}}
    (inventory / "lab-hosts.yml").write_text(yaml.safe_dump(lab))


def validate(inventory: Path, *mesh: Path) -> subprocess.CompletedProcess:
    argv = ["vmesh", "validate", "--inventory", str(inventory)]
    for path in mesh:
        argv += ["--mesh", str(path)]
    return run(argv, cwd=inventory.parent)


# --- yaml -----------------------------------------------------------------------------------------------------

def is_istio(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).split("/")[0].endswith("istio.io")


def variables(doc: dict[str, Any]) -> Iterator[str]:
    """The variable names an inventory block sets: host vars and group vars of a hosts.yml, or a group_vars file."""
    if "all" not in doc:
        yield from doc
        return

    def walk(group: dict[str, Any]) -> Iterator[str]:
        for hostvars in (group.get("hosts") or {}).values():
            yield from (hostvars or {})
        yield from (group.get("vars") or {})
        for child in (group.get("children") or {}).values():
            yield from walk(child or {})

    yield from walk(doc["all"])


def check_variable(name: str, where: str) -> None:
    options = set().union(*role_options().values())
    if name.startswith("vmesh_"):
        assert name in documented_variables(), f"{where}: {name} is not in docs/reference/inventory.md"
    else:
        assert name in options or name.startswith("ansible_"), f"{where}: {name} is no vmesh_* variable or role option"


def check_playbook(plays: list[Any], where: str) -> None:
    for play in plays:
        target = play.get("ansible.builtin.import_playbook") or play.get("import_playbook")
        if target:
            assert target.startswith("vmesh.mesh."), f"{where}: {target}"
            assert (ROOT / "playbooks" / f"{target.removeprefix('vmesh.mesh.')}.yml").is_file(), f"{where}: {target}"
        for role in play.get("roles", []):
            name = role["role"] if isinstance(role, dict) else role
            assert name.removeprefix("vmesh.mesh.") in role_options(), f"{where}: no role {name}"


@pytest.mark.parametrize("block", blocks("yaml"))
def test_yaml_sample(block: Block, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(block.text) if d is not None]
    assert docs, f"{block.where}: an empty block"
    if any(is_istio(d) for d in docs):
        assert all(is_istio(d) for d in docs), f"{block.where}: Istio documents mixed with something else"
        inventory = inventory_copy(block.mark("inventory", "bookinfo"), tmp_path)
        sample = tmp_path / "sample.yaml"
        sample.write_text(block.text)
        proc = validate(inventory, inventory / "mesh", sample)
        expected = block.mark("expect-error")
        if expected is None:
            assert proc.returncode == 0, f"{block.where}: vmesh validate refused the sample:\n{proc.stderr}"
        else:
            assert proc.returncode != 0, f"{block.where}: vmesh validate took a sample meant to fail"
            assert expected in proc.stderr, f"{block.where}: expected {expected!r} in:\n{proc.stderr}"
    elif all(isinstance(d, list) for d in docs):
        for plays in docs:
            check_playbook(plays, block.where)
    elif len(docs) == 1 and isinstance(docs[0], dict):
        (doc,) = docs
        for name in variables(doc):
            check_variable(name, block.where)
        if "all" in doc:  # a whole inventory: compile it alone, with addresses for the hosts that lack them
            inventory = tmp_path / "inventory"
            inventory.mkdir()
            (inventory / "hosts.yml").write_text(block.text)
            give_addresses(inventory)
        else:  # group_vars: into the file its first comment names (default: group vmesh) of the Bookinfo inventory
            inventory = inventory_copy("bookinfo", tmp_path)
            named = re.match(r"#\s*(group_vars/[\w.-]+\.yml)", block.text)
            (inventory / (named.group(1) if named else "group_vars/vmesh.yml")).write_text(block.text)
        proc = validate(inventory)
        assert proc.returncode == 0, f"{block.where}: the inventory does not compile:\n{proc.stderr}"
    else:
        pytest.fail(f"{block.where}: neither Istio documents, an inventory nor a playbook")


# --- shell ----------------------------------------------------------------------------------------------------

def commands(block: Block) -> Iterator[list[str]]:
    """Each simple command of a block: lines joined at a trailing backslash, split at |, &&, || and ;."""
    lines = block.text.replace("\\\n", " ").splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, command = list(lexer), []
        for token in tokens + [";"]:
            if token in ("|", "&&", "||", ";"):
                while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):
                    command.pop(0)  # VAR=value before a command, or alone
                if command:
                    yield command
                command = []
            else:
                command.append(token)


def check_vmesh(args: list[str], where: str) -> None:
    assert args, f"{where}: vmesh with no subcommand"
    path = [args[0]]
    assert has_option(help_text("vmesh"), args[0]), f"{where}: vmesh has no subcommand {args[0]}"
    rest = args[1:]
    if args[0] in ("lab", "rollout"):
        verbs = [a for a in rest if not a.startswith("-")]
        assert verbs, f"{where}: vmesh {args[0]} needs a verb"
        assert has_option(help_text("vmesh", args[0]), verbs[0]), f"{where}: vmesh {args[0]} has no {verbs[0]}"
        path.append(verbs[0])
        rest = rest[rest.index(verbs[0]) + 1:]
    help_ = help_text("vmesh", *path)
    if path == ["lab", "ssh"]:  # after HOST, the words are the remote command's
        head, i = [], 0
        while i < len(rest) and rest[i].startswith("-"):
            head += rest[i:i + 2]
            i += 2
        rest = head
    for token in rest:
        if token.startswith("-"):
            option = token.split("=")[0]
            assert has_option(help_, option), f"{where}: vmesh {' '.join(path)} has no option {option}"
    if args[0] in ("validate", "render", "rollout"):
        from vmesh.cli import parser

        try:
            parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: vmesh {' '.join(args)}: the arguments do not parse")


def check_ansible_playbook(args: list[str], where: str) -> None:
    help_ = help_text("ansible-playbook")
    positional, i = [], 0
    while i < len(args):
        token = args[i]
        if token.startswith("-"):
            assert has_option(help_, token.split("=")[0]), f"{where}: ansible-playbook has no option {token}"
            if token in PLAYBOOK_VALUE_OPTIONS:
                value = args[i + 1]
                if token in ("-i", "--inventory") and value.startswith("examples/"):
                    assert (ROOT / value).exists(), f"{where}: no inventory {value}"
                if token in ("-e", "--extra-vars"):
                    if value.startswith("@"):
                        assert (ROOT / value[1:]).is_file(), f"{where}: no file {value[1:]}"
                    else:
                        check_variable(value.split("=")[0], where)
                i += 1
        else:
            positional.append(token)
        i += 1
    assert len(positional) == 1, f"{where}: ansible-playbook needs one playbook, got {positional}"
    (playbook,) = positional
    if playbook.startswith("vmesh.mesh."):
        name = playbook.removeprefix("vmesh.mesh.")
        assert (ROOT / "playbooks" / f"{name}.yml").is_file(), f"{where}: the collection has no playbook {name}"
    else:
        assert (ROOT / playbook).is_file(), f"{where}: no playbook {playbook}"


def check_ansible_galaxy(args: list[str], where: str) -> None:
    assert args[:1] == ["collection"] and args[1:2] in (["build"], ["install"]), \
        f"{where}: only ansible-galaxy collection build/install is documented"
    help_ = help_text("ansible-galaxy", "collection", args[1])
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    positional, i = [], 2
    while i < len(args):
        if args[i].startswith("-"):
            assert has_option(help_, args[i]), f"{where}: ansible-galaxy collection {args[1]} has no {args[i]}"
            i += 2 if args[i] in ("--output-path", "-p", "--collections-path") else 1
        else:
            positional.append(args[i])
            i += 1
    if args[1] == "build":
        assert positional in ([], ["."]), f"{where}: build the collection from the checkout: {positional}"
    else:
        assert len(positional) == 1, f"{where}: install one collection, got {positional}"
        artifact = positional[0]
        assert artifact == "vmesh.mesh" or Path(artifact).name == f"vmesh-mesh-{version}.tar.gz", \
            f"{where}: {artifact} is not the artifact ansible-galaxy builds (vmesh-mesh-{version}.tar.gz)"


@pytest.mark.parametrize("block", blocks("sh", "bash", "console"))
def test_shell_sample(block: Block) -> None:
    found = list(commands(block))
    assert found, f"{block.where}: no command in the block"
    for argv in found:
        program, args = argv[0], argv[1:]
        if program == "vmesh":
            check_vmesh(args, block.where)
        elif program == "ansible-playbook":
            check_ansible_playbook(args, block.where)
        elif program == "ansible-galaxy":
            check_ansible_galaxy(args, block.where)
        elif program == "make":
            for target in args:
                assert target in make_targets(), f"{block.where}: the Makefile has no target {target}"
        else:
            assert program in ALLOWED, f"{block.where}: {program} is neither checked nor on the allow-list"


@pytest.mark.parametrize("block", blocks("ini"))
def test_ini_sample(block: Block) -> None:
    sample, checkout = configparser.ConfigParser(interpolation=None), configparser.ConfigParser(interpolation=None)
    sample.read_string(block.text)
    checkout.read(ROOT / "ansible.cfg")
    for section in sample.sections():
        for key, value in sample[section].items():
            assert checkout.get(section, key, fallback=None) == value, \
                f"{block.where}: [{section}] {key} is not what the checkout's ansible.cfg says"


@pytest.mark.parametrize("block", blocks("text"))
def test_text_output(block: Block) -> None:
    command = block.mark("output-of")
    if command is None:
        return  # output a person reads, from a run on VMs
    proc = run(shlex.split(command))
    assert proc.returncode == 0, f"{block.where}: {command} failed: {proc.stderr}"
    assert proc.stdout.strip() == block.text.strip(), f"{block.where}: {command} prints something else now"


def test_every_block_has_a_known_language() -> None:
    for block in BLOCKS:
        assert block.lang in LANGUAGES, f"{block.where}: a code block needs a language of {sorted(LANGUAGES)}"


# --- pages and links ------------------------------------------------------------------------------------------

def anchors(page: Path) -> set[str]:
    out = set()
    for line in without_fences(page).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(without_fences(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(ROOT)}: the link {target} points to nothing"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.relative_to(ROOT)}: no heading #{anchor} in {path or 'itself'}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_in_the_index() -> None:
    index = (DOCS / "README.md").read_text()
    for page in DOCS.rglob("*.md"):
        if page != DOCS / "README.md":
            assert f"({page.relative_to(DOCS)})" in index, f"docs/README.md does not list {page.relative_to(DOCS)}"


def test_task_pages_have_prerequisites_steps_and_clean_up() -> None:
    for page in sorted((DOCS / "tasks").glob("*.md")):
        headings = re.findall(r"^## (.+)$", page.read_text(), re.M)
        assert headings[:3] == ["Prerequisites", "Steps", "Clean-up"] or \
            {"Prerequisites", "Steps", "Clean-up"} <= set(headings), f"{page.name}: {headings}"


def test_every_inventory_variable_is_documented() -> None:
    sources = [*ROOT.glob("roles/*/defaults/main.yml"), *ROOT.glob("roles/*/meta/argument_specs.yml"),
               ROOT / "src" / "vmesh" / "registry.py"]
    used = {name for source in sources for name in re.findall(r"\b(vmesh_[a-z0-9_]+)\b", source.read_text())}
    missing = sorted(used - documented_variables())
    assert not missing, f"docs/reference/inventory.md lacks {missing}"


def test_every_role_option_is_documented() -> None:
    text = (DOCS / "reference" / "roles.md").read_text()
    missing = sorted(f"{role}: {name}" for role, names in role_options().items() for name in names
                     if f"`{name}`" not in text)
    assert not missing, f"docs/reference/roles.md lacks {missing}"
    for role in role_options():
        assert f"## {role}\n" in text, f"docs/reference/roles.md has no section for {role}"
