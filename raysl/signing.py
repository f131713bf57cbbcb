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

A changed file may be a replaced one or a damaged one (cut short by a crash or a full disk while
Ray rewrote it, an incomplete copy): a signature cannot tell them apart. So every state file is
also checked for its form, from its bytes alone (:func:`damage`: a pickle's opcodes up to its STOP,
JSON that parses, SQLite's quick_check); a damaged file is refused as such, with the fix for it
(an intact copy), and ``--trust-experiment`` refuses to sign it: Ray would fail on it, and a failed
restore is what used to start the experiment over.
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
from raysl.outcome import STUDY_DB_FILE

SIGNATURE_FILE = "raysl_signatures.json"
SECRET_ENV = "RAYSL_SECRET"
TRUST_OPTION = "--trust-experiment"
FORMAT = 1
ALGORITHM = "HMAC-SHA256"
_DOMAIN = b"raysl-experiment-state-v1\0"  # HMACs of this key for any other purpose never collide with these
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
    return relpath == STUDY_DB_FILE


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


# --------------------------------------------------------------------------
# damage: a state file cut short (a crash or a full disk while it was written, an incomplete copy)


def damage(loc: storage.Location, relpath: str) -> str | None:
    """What makes a state file unusable to Ray, found from its bytes alone (nothing is unpickled, no code
    runs): a pickle that ends before its STOP opcode, JSON that does not parse, an SQLite file SQLite
    calls damaged. None when it is whole (which says nothing about who wrote it)."""
    if relpath == STUDY_DB_FILE:
        return _sqlite_damage(loc)
    data = storage.read_bytes(loc) or b""
    if not data:
        return "it is empty"
    name = relpath.rsplit("/", 1)[-1]
    if name.endswith((".pkl", ".pickle")) or data[:1] == b"\x80":  # Ray's pickles under a .json name too
        return _pickle_damage(data)
    try:
        json.loads(data)
    except ValueError as exc:
        where = f" at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        return f"it is not complete JSON ({getattr(exc, 'msg', exc)}{where} of {len(data)})"
    return None


def _pickle_damage(data: bytes) -> str | None:
    import pickletools

    try:
        for opcode, _, _ in pickletools.genops(data):  # reads the opcodes only: it imports and calls nothing
            if opcode.name == "STOP":
                return None
    except Exception as exc:  # noqa: BLE001 - genops raises ValueError and others on a torn opcode
        text = " ".join(str(exc).split())
        if any(word in text for word in ("exhausted", "not enough data", "remain", "truncated")):
            return f"it is cut short (its {len(data)} bytes end inside the pickle)"
        return f"it is not a valid pickle ({text[:120]})"
    return f"it is cut short (its {len(data)} bytes end inside the pickle)"


def _sqlite_damage(loc: storage.Location) -> str | None:
    if not loc.is_local:
        return None
    import sqlite3
    from urllib.parse import quote

    try:
        con = sqlite3.connect(f"file:{quote(loc.path)}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        text = " ".join(str(exc).split())
        if "not a database" in text or "malformed" in text:
            return f"SQLite cannot read it ({text})"
        return None  # busy, or a journal to roll back: what SQLite itself deals with when the search opens it
    if rows and rows[0][0] != "ok":
        return f"SQLite finds it damaged ({' '.join(str(rows[0][0]).split())[:120]})"
    return None


def _restore_hint(root: storage.Location) -> str:
    return (f"put back an intact copy of that file (from a backup or a copy of {root}) and resume again: the rest "
            "of the experiment is as it was; otherwise start a new experiment with --name NEW")


def _damaged_line(root: storage.Location, rel: str, broken: str, why: str | None, trusting: bool = False) -> str:
    path = root.join(rel)
    if trusting:  # --trust-experiment: what the signature would say was not asked
        return (f"{path}: damaged: {broken} (cut short by a crash or a full disk while it was written, or copied "
                f"incompletely?); {TRUST_OPTION} signs files as they are, but Ray cannot resume from this one, so "
                "raysl signed nothing; " + _restore_hint(root))
    if why is None:  # the very bytes raysl signed: Ray wrote it that way
        return (f"{path}: damaged: {broken}, although raysl signed it as Ray wrote it (the disk was full or the "
                f"search was killed while Ray saved it?); Ray cannot resume from it and raysl did not load it; "
                + _restore_hint(root))
    return (f"{path}: not written by raysl on this machine/secret or changed since ({why}); and {broken}: so it was "
            "damaged (cut short by a crash or a full disk while it was written, or copied incompletely) or replaced "
            f"by someone (a signature cannot tell which); raysl did not load it, and Ray could not resume from it "
            f"({TRUST_OPTION} would not help); " + _restore_hint(root))


def check_intact(experiment: str | storage.Location, trusting: bool = False) -> int:
    """Raise :class:`UntrustedStateError` naming the first state file that is damaged (:func:`damage`):
    ``--trust-experiment`` (``trusting``) signs files as they are, and a damaged one cannot be resumed
    from. Returns how many were checked."""
    root = storage.resolve(experiment)
    files = state_files(root)
    for rel in files:
        broken = damage(root.join(rel), rel)
        if broken is not None:
            raise UntrustedStateError(_damaged_line(root, rel, broken, "no signature", trusting))
    return len(files)


def verify_experiment(experiment: str | storage.Location) -> int:
    """Raise :class:`UntrustedStateError` unless every state file in the experiment carries a valid
    signature by this user's secret and is whole; returns how many were checked. Reads the files as
    bytes only.

    A signature that does not match means the file changed since raysl signed it: replaced by someone,
    or damaged (a crash or a full disk while Ray rewrote it, an incomplete copy). The signature cannot
    tell these apart; the file's form sometimes can (:func:`damage`): a file cut short is named as
    such, with the fix for it (an intact copy), never ``--trust-experiment``, which would sign the
    damage and let Ray fail on it."""
    root = storage.resolve(experiment)
    # tuner.pkl first: Tuner.restore unpickles it before anything else
    files = sorted(state_files(root), key=lambda rel: (rel != "tuner.pkl", rel.count("/"), rel))
    if not files:
        return 0
    where = root.join(SIGNATURE_FILE)
    text = storage.read_text(where, missing_ok=True)
    if text is None:
        check_intact(root)  # a damaged file first: signing it as it is would not help
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
    bad, damaged = [], []
    for rel in files:
        expected = signed.get(rel)
        why = None
        if not isinstance(expected, str):
            why = "no signature"
        elif not hmac.compare_digest(expected, _digest(key, root.join(rel), rel)):
            why = "HMAC mismatch"
        broken = damage(root.join(rel), rel)
        if broken is not None:
            damaged.append((rel, broken, why))
        elif why is not None:
            bad.append((rel, why))
    more_count = len(bad) + len(damaged) - 1
    more = (f"; {more_count} more state file{'s fail' if more_count > 1 else ' fails'} too" if more_count > 0
            else "")
    if damaged:  # the fix differs (an intact copy) and is the one to give first
        rel, broken, why = damaged[0]
        raise UntrustedStateError(_damaged_line(root, rel, broken, why) + more)
    if bad:
        rel, why = bad[0]
        changed = ("; changed means replaced by someone, or damaged without showing it (a crash or a full disk "
                   "while Ray rewrote it): a signature cannot tell which; if you have an intact copy of it, put it "
                   "back and resume again" if why == "HMAC mismatch" else "")
        raise UntrustedStateError(f"{root.join(rel)}: not written by raysl on this machine/secret or changed since "
                                  f"({why}){more}{changed}; {_fix(root, other_secret)}")
    return len(files)
