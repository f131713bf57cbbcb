"""Signatures over the pickled state of an experiment: ``--resume`` unpickles nothing raysl did not sign.

Ray Tune keeps a search's state in the experiment folder as pickles, and ``raysl tune --resume``
/ ``raysl scale --resume`` hand that folder to ``Tuner.restore``, which unpickles them. Unpickling
runs whatever code the file names, and experiment folders live on shared storage: anyone who can
write there could run code on the machine of the next person who resumes. So raysl signs every file
that gets unpickled (:func:`is_state_file`) with an HMAC-SHA256 keyed by a per-user secret kept
outside the experiment (:func:`secret`), after each search (:func:`sign_experiment`), and checks
them before a resume (:func:`verify_experiment`): a file that is unsigned, changed or signed with
another secret is refused in one line and never read as a pickle.

What gets signed (the files Ray or raysl unpickle from an experiment folder, any depth):

- ``*.pkl`` / ``*.pickle``: ``tuner.pkl``, ``searcher-state-*.pkl`` (raysl's own
  :class:`raysl.study.StudySearch` restores with ``pickle.load`` from it), ``callback-states-*.pkl``,
  each trial's ``params.pkl`` and ``error.pkl`` (Ray's ResultGrid unpickles the error);
- Ray's JSON state that embeds cloudpickle or is a pickle under a ``.json`` name:
  ``experiment_state-*.json``, ``search_gen_state-*.json``, ``basic-variant-state-*.json``,
  ``trial_metadata.json``;
- ``optuna.db``, the study's SQLite database when it sits in the experiment folder: Optuna's CMA-ES
  sampler keeps its state there as a pickle and unpickles it when the search goes on.

Not signed, because nothing unpickles them: checkpoints (``state.pt``, loaded with
``torch.load(weights_only=True)``, see :mod:`raysl.checkpoint`), raysl's own JSON and YAML, Ray
Train's ``checkpoint_manager_snapshot.json`` (plain JSON). A study in a database server
(``--optuna-storage``) is guarded by that server's access control, not by these signatures.

The signatures live in ``raysl_signatures.json`` in the experiment (file path relative to the
experiment -> HMAC hex; the path is part of what is signed, so a signed file moved to another name
does not verify). The secret is ``RAYSL_SECRET`` when set (on a cluster: set it where ``raysl tune``
runs, the same value wherever the experiment is resumed), else ``$XDG_CONFIG_HOME/raysl/secret``
(``~/.config/raysl/secret``), created on first use: 32 random bytes as hex, mode 0600.

A search killed outright (SIGKILL, a lost driver node) cannot sign what Ray saved last; its resume
is refused like a tampered one. A user who trusts the folder passes ``--trust-experiment``: raysl
then signs the files as they are with the user's secret and resumes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import sys
from pathlib import Path

from raysl import jsonio, storage
from raysl.errors import ConfigError, UntrustedStateError

SIGNATURE_FILE = "raysl_signatures.json"
SECRET_ENV = "RAYSL_SECRET"
TRUST_OPTION = "--trust-experiment"
FORMAT = 1
ALGORITHM = "HMAC-SHA256"
_DOMAIN = b"raysl-experiment-state-v1\0"  # HMACs of this key for any other purpose never collide with these
_STUDY_DB = "optuna.db"  # raysl.study.DB_FILE (not imported: raysl.study pulls in Ray Tune)
# Ray's state files that are JSON with embedded cloudpickle, or pickles under a .json name
_RAY_JSON_STATE = re.compile(
    r"^(experiment_state|search_gen_state|basic-variant-state)-.*\.json$|^trial_metadata\.json$")
_MIN_SECRET_CHARS = 16
_CHUNK = 1 << 20


def is_state_file(relpath: str) -> bool:
    """Whether the file at ``relpath`` (relative to the experiment) is one that Ray or raysl unpickles."""
    name = relpath.rsplit("/", 1)[-1]
    if name.endswith((".pkl", ".pickle")) or _RAY_JSON_STATE.match(name):
        return True
    return relpath == _STUDY_DB


# --------------------------------------------------------------------------
# the secret


def secret_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME", "")
    # the XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored
    root = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return root / "raysl" / "secret"


def secret() -> bytes:
    """The key that signs this user's experiments: ``RAYSL_SECRET``, else the secret file (created once)."""
    given = os.environ.get(SECRET_ENV)
    if given is not None:
        if len(given.strip()) < _MIN_SECRET_CHARS:
            raise ConfigError(f"{SECRET_ENV} is shorter than {_MIN_SECRET_CHARS} characters, too easy to guess; set it "
                              f"to a long random value, e.g. export {SECRET_ENV}=$(openssl rand -hex 32)")
        return given.strip().encode()
    path = secret_file()
    try:
        return _read_or_create(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read or create raysl's signing secret ({exc.strerror or exc}); fix its "
                          f"folder's permissions or set {SECRET_ENV} to a long random value") from None


def _read_or_create(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL: two raysl processes starting at once agree on one secret (the loser reads the winner's)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    info = os.stat(path)
    # a secret others can read lets them sign files for you; one others can write lets them replace it
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.getuid():
        raise ConfigError(f"{path}: raysl's signing secret is accessible to other users (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); run chmod 600 {path} (and make it yours), or delete "
                          "it to get a new one (experiments signed with the old one then need --trust-experiment)")
    value = path.read_text().strip()
    if len(value) < _MIN_SECRET_CHARS:
        raise ConfigError(f"{path}: raysl's signing secret is empty or too short; delete the file to get a new one")
    return value.encode()


def _key_id(key: bytes) -> str:
    """Names the secret in the signature file (to tell "another secret" from "changed") without revealing it."""
    return hmac.new(key, b"raysl-key-id", hashlib.sha256).hexdigest()[:16]


# --------------------------------------------------------------------------
# signing and checking


def state_files(experiment: str | storage.Location) -> list[str]:
    """The state files in the experiment, as paths relative to it, sorted."""
    return [rel for rel in storage.list_files(experiment) if is_state_file(rel)]


def _digest(key: bytes, loc: storage.Location, relpath: str) -> str:
    mac = hmac.new(key, _DOMAIN + relpath.encode() + b"\0", hashlib.sha256)
    with (storage.guard(loc, "reading it to check its signature", "--storage"),
          loc.fs.open_input_stream(loc.path) as stream):
        while chunk := stream.read(_CHUNK):
            mac.update(chunk)
    return mac.hexdigest()


def sign_experiment(experiment: str | storage.Location) -> int:
    """Sign every state file now in the experiment (replacing earlier signatures); returns how many."""
    root = storage.resolve(experiment)
    key = secret()
    files = {rel: _digest(key, root.join(rel), rel) for rel in state_files(root)}
    document = {"format": FORMAT, "algorithm": ALGORITHM, "key_id": _key_id(key), "files": files}
    storage.write_atomic(root.join(SIGNATURE_FILE), jsonio.dumps(document, indent=1) + "\n", option="--storage")
    return len(files)


def sign_quietly(experiment: str | storage.Location) -> None:
    """:func:`sign_experiment` after a search ended, however it ended: a failure is told, not raised
    (it must not hide the search's own outcome); the next ``--resume`` then says what to do."""
    try:
        sign_experiment(experiment)
    except Exception as exc:  # noqa: BLE001 - see above
        print(f"[raysl] warning: could not sign the saved search state in {experiment} ({' '.join(str(exc).split())}); "
              f"--resume will ask for {TRUST_OPTION}", file=sys.stderr, flush=True)


def _fix(root: storage.Location, other_secret: bool) -> str:
    secret_hint = (f"it was signed with another secret: set {SECRET_ENV} to the one it was written with"
                   if other_secret else
                   f"if it was written with another secret (another machine, a teammate), set {SECRET_ENV} to that one")
    return (f"raysl did not load it (unpickling runs the code a pickle names); {secret_hint}; if you trust every file "
            f"in {root} (e.g. a search killed before raysl could sign its state), resume with {TRUST_OPTION} to "
            "sign it with your secret; otherwise start a new experiment with --name NEW")


def verify_experiment(experiment: str | storage.Location) -> int:
    """Raise :class:`UntrustedStateError` unless every state file in the experiment carries a valid
    signature by this user's secret; returns how many were checked. Reads the files as bytes only."""
    root = storage.resolve(experiment)
    # tuner.pkl first: Tuner.restore unpickles it before anything else
    files = sorted(state_files(root), key=lambda rel: (rel != "tuner.pkl", rel.count("/"), rel))
    if not files:
        return 0
    where = root.join(SIGNATURE_FILE)
    text = storage.read_text(where, missing_ok=True)
    if text is None:
        raise UntrustedStateError(
            f"{where}: missing, so raysl cannot tell whether the pickled Ray state in {root} ({files[0]}"
            f"{f' and {len(files) - 1} more' if len(files) > 1 else ''}) was written by raysl on this machine/secret "
            f"(experiments from before raysl signed its state have none); raysl did not load it (unpickling runs "
            f"code); if you trust every file in {root}, resume once with {TRUST_OPTION}, which signs it with your "
            "secret; otherwise start a new experiment with --name NEW")
    key = secret()
    try:
        document = json.loads(text)
        signed = document["files"]
        if not isinstance(signed, dict):
            raise TypeError
        other_secret = document.get("key_id") != _key_id(key)
    except (ValueError, TypeError, KeyError):
        raise UntrustedStateError(f"{where}: not a raysl signature file (unreadable); "
                                  f"{_fix(root, False)}") from None
    bad = []
    for rel in files:
        expected = signed.get(rel)
        if not isinstance(expected, str) or not hmac.compare_digest(expected, _digest(key, root.join(rel), rel)):
            bad.append((rel, "no signature" if not isinstance(expected, str) else "HMAC mismatch"))
    if bad:
        rel, why = bad[0]
        more = f"; {len(bad) - 1} more state file{'s' * (len(bad) > 2)} fail too" if len(bad) > 1 else ""
        raise UntrustedStateError(f"{root.join(rel)}: not written by raysl on this machine/secret or changed since "
                                  f"({why}){more}; {_fix(root, other_secret)}")
    return len(files)
