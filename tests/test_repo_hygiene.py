"""No credentials in the repository: every file git tracks (or would add) is scanned.

The scan covers ``git ls-files`` plus untracked files git does not ignore
(``git ls-files --others --exclude-standard``), so a key dropped in the tree fails the test
before it is committed. It looks for private key blocks, GCP service-account JSON, AWS access
key ids, Google API keys, GitHub and Slack tokens, and literal ``password = "..."`` /
``secret = "..."`` style assignments with non-trivial values, and reports ``file:line: kind``.

A line may opt out of the generic assignment check with the marker ``hygiene: allow-secret``
(for a documented, deliberate fake); the token formats have no opt-out.

The patterns below are assembled from pieces, and the planted credentials in the self-tests are
built at run time, so this file never contains a string that the scan itself would flag.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Files over 2 MB are skipped (data dumps, lock-like artefacts; nothing here is that large and a
# credential pasted into source is not), as are binary files (a NUL byte in the first 8 KiB).
MAX_BYTES = 2 * 1024 * 1024
BINARY_SNIFF_BYTES = 8192
ALLOW_MARKER = "hygiene: allow-" + "secret"

_DASHES = "-" * 5
_TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {
    "private key block": re.compile(
        _DASHES + "BEGIN (?:[A-Z0-9]+ )*" + "PRIVATE KEY(?: BLOCK)?" + _DASHES
    ),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)" + r"[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza" + r"[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"),
    "GitHub token": re.compile(
        r"\b(?:gh[pousr]_" + r"[A-Za-z0-9]{36,}|github_pat_" + r"[A-Za-z0-9_]{22,})"
    ),
    "Slack token": re.compile(r"\bxox[abposr]-" + r"[A-Za-z0-9-]{10,}"),
    "Slack webhook": re.compile(r"https://hooks\.slack\.com/" + r"services/T[A-Za-z0-9_/]{8,}"),
}
_SA_TYPE = re.compile(r'"type"\s*:\s*"service_' + r'account"')
_SA_PRIVATE_KEY = re.compile(r'"private_' + r'key"\s*:\s*"')
# name = "value" / name: 'value' / "name": "value", where name ends in a credential word.
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?<![A-Za-z0-9])
    ["']?(?P<name>[A-Za-z0-9_.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key
        |private[_-]?key|client[_-]?secret))["']?
    \s*(?::|=|:=)\s*
    [rbuf]?(?P<quote>["'])(?P<value>[^"'\n]*)(?P=quote)
    """
)
_PLACEHOLDER_WORDS = (
    "example",
    "changeme",
    "change-me",
    "change_me",
    "dummy",
    "placeholder",
    "redacted",
    "your",
    "xxx",
    "***",
    "fake",
    "sample",
    "todo",
    "<",
    "${",
    "{{",
    "%(",
    "os.environ",
)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


def _non_trivial(value: str) -> bool:
    """A literal worth flagging: 8+ chars, varied, not a placeholder or an env-var name."""
    if len(value) < 8 or len(set(value)) < 4:
        return False
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return False
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", value):  # an environment variable's name
        return False
    if re.match(r"projects/[^/]+/secrets/", value):  # a Secret Manager reference, not a secret
        return False
    return not re.fullmatch(r"[a-z]+(?:[_-][a-z]+)*", value) or len(value) >= 16


def scan_text(text: str, path: str = "<text>") -> list[Finding]:
    """Every credential-looking thing in ``text``, as ``path:line: kind`` findings."""
    findings: list[Finding] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        for kind, pattern in _TOKEN_PATTERNS.items():
            if pattern.search(line):
                findings.append(Finding(path, number, kind))
        if ALLOW_MARKER in line:
            continue
        for match in _ASSIGNMENT.finditer(line):
            if _non_trivial(match.group("value")):
                findings.append(Finding(path, number, f"literal {match.group('name')} assignment"))
    if _SA_PRIVATE_KEY.search(text):
        for number, line in enumerate(lines, start=1):
            if _SA_TYPE.search(line):
                findings.append(Finding(path, number, "GCP service-account key JSON"))
    return findings


def scan_file(path: Path, shown_as: str) -> list[Finding]:
    """Scan one file; binary files and files over MAX_BYTES are skipped (empty result)."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_BYTES:
        return []
    data = path.read_bytes()
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return []
    return scan_text(data.decode("utf-8", errors="replace"), shown_as)


def repo_files(root: Path = REPO_ROOT) -> list[str]:
    """Tracked files plus untracked files that git does not ignore, relative to ``root``."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        pytest.skip("not a git checkout (or git is missing): nothing to enumerate")
    names: set[str] = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(
            [git, "ls-files", "-z", *extra], cwd=root, check=True, capture_output=True
        ).stdout
        names.update(name for name in out.decode("utf-8", "surrogateescape").split("\0") if name)
    return sorted(names)


def test_repository_has_no_credentials() -> None:
    files = repo_files()
    assert files, "git ls-files listed nothing"
    findings = [f for name in files for f in scan_file(REPO_ROOT / name, name)]
    assert not findings, "credential-like content in the repository:\n" + "\n".join(
        map(str, findings)
    )


# -- the scanner can fail: planted credentials, built at run time ------------------------------


def _planted() -> dict[str, str]:
    dashes = "-" * 5
    pem_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 2
    return {
        "private key block": f"{dashes}BEGIN RSA PRIVATE KEY{dashes}\n{pem_body}\n",
        "AWS access key id": "aws_id = " + "AK" + "IA" + "Q3EGRIOSFODNN7EX",
        "Google API key": "key=" + "AI" + "za" + "SyD" + "x" * 8 + "-_0123456789abcdefABCDEF",
        "GitHub token": "token: " + "gh" + "p_" + "a1B2c3D4e5" * 4,
        "Slack token": "SLACK=" + "xo" + "xb-" + "123456789012-abcdefABCDEF",
        "Slack webhook": "https://hooks.slack.com/" + "services/" + "T0000/B0000/XXXXabcd",
        "literal password assignment": 'password = "' + "Tr0ub4dor" + '&3horse"',
        "literal db_secret assignment": "db_secret: '" + "s3cr3t-" + "V4lue-9xq'",
        "literal client_secret assignment": '"client_secret": "' + "GOCSPX-" + 'abc123def456"',
    }


@pytest.mark.parametrize("kind", sorted(_planted()))
def test_scanner_catches_planted_credential(kind: str) -> None:
    text = "first line\n" + _planted()[kind] + "\nlast line\n"
    findings = scan_text(text, "planted.txt")
    assert [str(f) for f in findings if f.kind == kind] == [f"planted.txt:2: {kind}"]


def test_scanner_catches_service_account_json() -> None:
    text = "{\n" + '  "type": "service_' + 'account",\n' + '  "project_id": "p",\n'
    text += '  "private_' + 'key": "x"\n}\n'
    assert [str(f) for f in scan_text(text, "sa.json")] == [
        "sa.json:2: GCP service-account key JSON"
    ]


@pytest.mark.parametrize(
    "line",
    [
        'password = ""',
        'password = "changeme"',
        'secret = "${DB_PASSWORD}"',
        'token = os.environ["FRAUDSTREAM_TOKEN"]',
        'api_key = "<your api key>"',
        'ENV_KEY_SECRET = "FRAUDSTREAM_ID_KEY_SECRET"',
        'password = "hunter2"',
        "secret_name = 'projects/p/secrets/s/versions/1'",
        '{KEY_SECRET: "projects/p/secrets/s/versions/latest"}',
        'password = "Tr0ub4dor' + '&3horse"  # ' + ALLOW_MARKER,
    ],
)
def test_scanner_ignores_placeholders_and_references(line: str) -> None:
    assert scan_text(line) == []


def test_scan_file_skips_binary_and_large_files(tmp_path: Path) -> None:
    planted = _planted()["AWS access key id"]
    text_file = tmp_path / "leak.txt"
    text_file.write_text(planted + "\n")
    assert [str(f) for f in scan_file(text_file, "leak.txt")] == ["leak.txt:1: AWS access key id"]
    binary = tmp_path / "leak.bin"
    binary.write_bytes(b"\x00\x01" + planted.encode())
    assert scan_file(binary, "leak.bin") == []
    large = tmp_path / "large.txt"
    large.write_text(planted + "\n" + "a" * MAX_BYTES)
    assert scan_file(large, "large.txt") == []


def test_repo_files_include_untracked_not_ignored(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is missing")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    (tmp_path / "new.txt").write_text("x\n")
    (tmp_path / "ignored.txt").write_text("x\n")
    assert repo_files(tmp_path) == [".gitignore", "new.txt"]
