"""Station key backends against a real SoftHSM2 token and real secp256k1 verifiers.

SoftHSM2 reads SOFTHSM2_CONF when python-pkcs11 initialises it, so one token directory serves
the whole pytest session (the `hsm` fixture activates it before anything loads the module);
behaviour that needs a second directory in one process runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve
import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from eth_account import Account
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.util.ec import encode_named_curve_parameters

from gridpoints_signers import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    DevelopmentKeyWarning,
    DevKeySigner,
    InsecureKeyError,
    InvalidDigestError,
    InvalidPublicKeyError,
    InvalidSignatureError,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    ModuleLoadError,
    PinUnavailableError,
    Pkcs11Module,
    Pkcs11Signer,
    RecoveryError,
    Signer,
    SignerError,
    SoftHsmError,
    SoftHsmToken,
    TokenLoginError,
    TokenNotFoundError,
    UnsupportedKeyError,
    address_from_public_key,
    default_module_path,
    open_session,
    pin_from_env,
    pin_from_file,
    recover_address,
    resolve_pin,
    split_signature,
    to_low_s_with_recovery,
)
from gridpoints_signers import softhsm as softhsm_module
from gridpoints_signers.devkey import WARNING_TEXT
from gridpoints_signers.pkcs11 import PIN_ENV, PIN_FILE_ENV, unwrap_ec_point

ROOT = Path(__file__).resolve().parents[2]

SO_PIN = "so-pin-for-tests"
USER_PIN = "user-pin-for-tests"
TOKEN = "gridpoints-test"
FRESH_TOKEN = "gridpoints-fresh"  # nothing logs in to it before the wrong-PIN test
DEV_PASSWORD = "dev-password-for-tests"
KNOWN_DIGEST = keccak(b"GridPoints EnergyTransfer: known digest for signer tests")
BAD_DIGESTS = [b"", bytes(31), bytes(33), bytes(64), "00" * 32, None]


@dataclass(frozen=True, slots=True)
class Hsm:
    token: SoftHsmToken
    fresh: SoftHsmToken
    module: Pkcs11Module


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    """A private SoftHSM2 directory, activated before anything in this process loads SoftHSM2."""
    directory = tmp_path_factory.mktemp("softhsm")
    token = SoftHsmToken.create(directory, TOKEN, so_pin=SO_PIN, user_pin=USER_PIN)
    fresh = SoftHsmToken.create(directory, FRESH_TOKEN, so_pin=SO_PIN, user_pin=USER_PIN)
    previous = os.environ.get("SOFTHSM2_CONF")
    module = token.activate()
    try:
        yield Hsm(token, fresh, module)
    finally:
        # The module keeps its configuration; restoring only keeps later subprocesses clean.
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def station_key(hsm: Hsm) -> Iterator[Pkcs11Signer]:
    signer = Pkcs11Signer.generate("station-main", token_label=TOKEN, pin=USER_PIN)
    try:
        yield signer
    finally:
        signer.close()


@pytest.fixture(scope="session")
def dev_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devkey") / "station.json"
    DevKeySigner.create(path, DEV_PASSWORD)
    return path


@pytest.fixture(scope="session")
def dev_key(dev_key_path: Path) -> DevKeySigner:
    return DevKeySigner.open(dev_key_path, DEV_PASSWORD)


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _assert_canonical(signature: bytes, digest: bytes, address: str) -> None:
    assert len(signature) == 65
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    assert 0 < r < SECP256K1_N
    assert 0 < s <= SECP256K1_HALF_N, "high s"
    assert v in (27, 28)
    assert Account._recover_hash(digest, signature=signature) == address
    recovered = coincurve.PublicKey.from_signature_and_message(
        signature[:64] + bytes([v - 27]), digest, hasher=None
    )
    assert address_from_public_key(recovered.format(compressed=False)) == address


def _raw_keypair(label: str, private: dict[Attribute, object], curve: str = "secp256k1") -> None:
    """A key pair made with python-pkcs11 directly, bypassing Pkcs11Signer.generate's template."""
    with open_session(TOKEN, pin=USER_PIN, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
        )
        params.generate_keypair(
            store=True,
            label=label,
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
            private_template={Attribute.TOKEN: True, Attribute.SIGN: True, **private},
        )


def _private_key_object(session: pkcs11.Session, label: str) -> Any:
    keys = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})
    )
    assert len(keys) == 1
    return keys[0]


# ------------------------------------------------------------------------ PKCS#11 / SoftHSM2


def test_generated_key_is_sensitive_and_never_leaves_the_token(
    hsm: Hsm, station_key: Pkcs11Signer
) -> None:
    with open_session(TOKEN, pin=USER_PIN) as session:
        key = _private_key_object(session, station_key.key_label)
        assert key[Attribute.KEY_TYPE] == KeyType.EC
        assert bytes(key[Attribute.EC_PARAMS]) == encode_named_curve_parameters("secp256k1")
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.ALWAYS_SENSITIVE] is True
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.LOCAL] is True  # generated inside the token, not imported
        assert key[Attribute.PRIVATE] is True
        assert key[Attribute.TOKEN] is True
        assert key[Attribute.DERIVE] is False
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]  # the read itself is what must fail
    assert isinstance(station_key, Signer)


def test_public_point_is_unwrapped_from_der(hsm: Hsm, station_key: Pkcs11Signer) -> None:
    with open_session(TOKEN, pin=USER_PIN) as session:
        (public,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: station_key.key_label}
        )
        raw = bytes(public[Attribute.EC_POINT])
    # SoftHSM2 follows the standard: a DER OCTET STRING around 0x04 || X || Y.
    assert raw[:3] == b"\x04\x41\x04" and len(raw) == 67
    assert unwrap_ec_point(raw) == station_key.public_key == raw[2:]
    assert unwrap_ec_point(raw[2:]) == raw[2:]  # the bare form some modules return
    with pytest.raises(InvalidPublicKeyError):
        unwrap_ec_point(raw[:-1])
    assert address_from_public_key(station_key.public_key) == station_key.address


def test_200_hsm_signatures_recover_to_the_station_address(station_key: Pkcs11Signer) -> None:
    digests = [secrets.token_bytes(32) for _ in range(198)] + [bytes(32), b"\xff" * 32]
    for digest in digests:
        _assert_canonical(station_key.sign_digest(digest), digest, station_key.address)


def test_token_emits_high_s_that_the_signer_normalises(station_key: Pkcs11Signer) -> None:
    """SoftHSM2 is plain ECDSA: about half its raw signatures have s > n/2."""
    with open_session(TOKEN, pin=USER_PIN) as session:
        key = _private_key_object(session, station_key.key_label)
        raw = [key.sign(secrets.token_bytes(32), mechanism=Mechanism.ECDSA) for _ in range(64)]
    assert all(len(sig) == 64 for sig in raw)
    high = sum(int.from_bytes(sig[32:], "big") > SECP256K1_HALF_N for sig in raw)
    assert 0 < high < 64, "the normalisation path would be untested"


def test_known_digest_verifies_with_cryptography(station_key: Pkcs11Signer) -> None:
    signature = station_key.sign_digest(KNOWN_DIGEST)
    r, s, _ = split_signature(signature)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), station_key.public_key)
    algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))  # Prehashed only checks the 32-byte length
    public.verify(encode_dss_signature(r, s), KNOWN_DIGEST, algorithm)
    with pytest.raises(InvalidSignature):
        public.verify(encode_dss_signature(r, s), keccak(KNOWN_DIGEST), algorithm)
    # The token's own verifier agrees with the normalised (low-s) form as well.
    with open_session(TOKEN, pin=USER_PIN) as session:
        (token_public,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: station_key.key_label}
        )
        assert token_public.verify(KNOWN_DIGEST, signature[:64], mechanism=Mechanism.ECDSA)


def test_reopening_finds_the_same_key(station_key: Pkcs11Signer) -> None:
    with Pkcs11Signer.open(station_key.key_label, token_label=TOKEN, pin=USER_PIN) as again:
        assert again.address == station_key.address
        assert again.public_key == station_key.public_key
        _assert_canonical(again.sign_digest(KNOWN_DIGEST), KNOWN_DIGEST, station_key.address)
    with pytest.raises(SignerError, match="closed"):
        again.sign_digest(KNOWN_DIGEST)
    # Closing one signer leaves the token's login, and the other signer, working.
    _assert_canonical(station_key.sign_digest(KNOWN_DIGEST), KNOWN_DIGEST, station_key.address)


def test_generate_refuses_to_overwrite_an_existing_label(station_key: Pkcs11Signer) -> None:
    with pytest.raises(KeyExistsError, match="refusing to overwrite"):
        Pkcs11Signer.generate(station_key.key_label, token_label=TOKEN, pin=USER_PIN)
    with Pkcs11Signer.open(station_key.key_label, token_label=TOKEN, pin=USER_PIN) as again:
        assert again.address == station_key.address


def test_generated_keys_are_distinct(hsm: Hsm, station_key: Pkcs11Signer) -> None:
    with Pkcs11Signer.generate(_unique("station"), token_label=TOKEN, pin=USER_PIN) as other:
        assert other.address != station_key.address
        _assert_canonical(other.sign_digest(KNOWN_DIGEST), KNOWN_DIGEST, other.address)


@pytest.mark.parametrize(
    ("private", "problem"),
    [
        ({Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True}, "CKA_EXTRACTABLE"),
        ({Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: False}, "CKA_SENSITIVE"),
        ({Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}, "CKA_EXTRACTABLE"),
    ],
    ids=["extractable", "not-sensitive", "both"],
)
def test_open_refuses_exportable_keys(
    hsm: Hsm, private: dict[Attribute, object], problem: str
) -> None:
    label = _unique("exportable")
    _raw_keypair(label, private)
    with pytest.raises(InsecureKeyError, match=problem):
        Pkcs11Signer.open(label, token_label=TOKEN, pin=USER_PIN)


def test_open_refuses_a_key_that_was_exportable_once(hsm: Hsm) -> None:
    """Flags flipped after creation do not help: the key may already have been copied out."""
    label = _unique("flipped")
    _raw_keypair(label, {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
    with open_session(TOKEN, pin=USER_PIN, rw=True) as session:
        key = _private_key_object(session, label)
        (public,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
        )
        # The secret really was readable: it is the key pair's. The token drops leading zero
        # bytes of the value (CKA_VALUE is a big integer), so it is padded, never length-checked.
        secret = bytes(key[Attribute.VALUE]).rjust(32, b"\0")
        derived = coincurve.PublicKey.from_secret(secret).format(compressed=False)
        assert derived == unwrap_ec_point(bytes(public[Attribute.EC_POINT]))
        key[Attribute.EXTRACTABLE] = False
        key[Attribute.SENSITIVE] = True
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
    with pytest.raises(InsecureKeyError) as info:
        Pkcs11Signer.open(label, token_label=TOKEN, pin=USER_PIN)
    assert "CKA_NEVER_EXTRACTABLE is false" in str(info.value)
    assert "CKA_ALWAYS_SENSITIVE is false" in str(info.value)


def test_open_refuses_another_curve(hsm: Hsm) -> None:
    label = _unique("p256")
    _raw_keypair(
        label, {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}, curve="secp256r1"
    )
    with pytest.raises(UnsupportedKeyError, match="secp256k1"):
        Pkcs11Signer.open(label, token_label=TOKEN, pin=USER_PIN)


def test_wrong_pin_is_a_clear_error_while_logged_in(station_key: Pkcs11Signer) -> None:
    """The token skips the PIN check once logged in; the module checks it instead."""
    with pytest.raises(TokenLoginError, match="incorrect user PIN") as info:
        Pkcs11Signer.open(station_key.key_label, token_label=TOKEN, pin="wrong-pin-0000")
    assert "wrong-pin-0000" not in str(info.value)
    with pytest.raises(TokenLoginError):
        open_session(TOKEN, pin="wrong-pin-0000")


def test_wrong_pin_is_a_clear_error_at_first_login(hsm: Hsm) -> None:
    with pytest.raises(TokenLoginError, match="incorrect user PIN") as info:
        open_session(FRESH_TOKEN, pin="wrong-pin-1111")
    assert "wrong-pin-1111" not in str(info.value)
    # A failed attempt leaves nothing behind that stops the right PIN from working.
    with open_session(FRESH_TOKEN, pin=USER_PIN) as session:
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []


def test_missing_token_label_is_a_clear_error(hsm: Hsm) -> None:
    with pytest.raises(TokenNotFoundError, match="no-such-token") as info:
        Pkcs11Signer.open("station-main", token_label="no-such-token", pin=USER_PIN)
    assert repr(TOKEN) in str(info.value)  # lists what is there


def test_missing_key_label_is_a_clear_error(hsm: Hsm) -> None:
    with pytest.raises(KeyNotFoundError, match="no private key labelled 'no-such-key'"):
        Pkcs11Signer.open("no-such-key", token_label=TOKEN, pin=USER_PIN)


def test_pin_from_environment_or_file(
    station_key: Pkcs11Signer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.delenv(PIN_FILE_ENV, raising=False)
    with pytest.raises(PinUnavailableError, match=PIN_FILE_ENV):
        resolve_pin()
    with pytest.raises(PinUnavailableError):
        Pkcs11Signer.open(station_key.key_label, token_label=TOKEN)

    monkeypatch.setenv(PIN_ENV, USER_PIN)
    assert pin_from_env() == USER_PIN == resolve_pin()
    with Pkcs11Signer.open(station_key.key_label, token_label=TOKEN) as from_env:
        assert from_env.address == station_key.address

    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    assert pin_from_file(pin_file) == USER_PIN
    monkeypatch.setenv(PIN_FILE_ENV, str(pin_file))
    with pytest.raises(PinUnavailableError, match="set only one"):
        resolve_pin()
    monkeypatch.delenv(PIN_ENV)
    with Pkcs11Signer.open(station_key.key_label, token_label=TOKEN) as from_file:
        assert from_file.address == station_key.address

    pin_file.write_text("")
    with pytest.raises(PinUnavailableError, match="empty"):
        resolve_pin()
    with pytest.raises(PinUnavailableError, match="cannot read"):
        pin_from_file(tmp_path / "absent")


def test_concurrent_signing_is_serialised_safely(station_key: Pkcs11Signer) -> None:
    second = Pkcs11Signer.open(station_key.key_label, token_label=TOKEN, pin=USER_PIN)
    failures: list[BaseException] = []

    def work(signer: Pkcs11Signer) -> None:
        try:
            for _ in range(50):
                digest = secrets.token_bytes(32)
                assert recover_address(digest, signer.sign_digest(digest)) == signer.address
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (station_key, second) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second.close()
    assert failures == []


def test_softhsm_token_is_idempotent(hsm: Hsm) -> None:
    assert hsm.token.ensure() is False
    assert hsm.token.existing_labels().count(TOKEN) == 1
    again = SoftHsmToken.create(hsm.token.directory, TOKEN, so_pin=SO_PIN, user_pin=USER_PIN)
    assert again.existing_labels().count(TOKEN) == 1
    assert again.activate() is hsm.module  # same configuration: nothing to re-initialise
    assert hsm.token.env == {"SOFTHSM2_CONF": str(hsm.token.directory / "softhsm2.conf")}
    assert SO_PIN not in repr(hsm.token) and USER_PIN not in repr(hsm.token)


def test_softhsm_activation_elsewhere_is_refused_once_loaded(hsm: Hsm, tmp_path: Path) -> None:
    other = SoftHsmToken.create(tmp_path / "hsm", "other", so_pin=SO_PIN, user_pin=USER_PIN)
    with pytest.raises(SoftHsmError, match="C_Initialize"):
        other.activate()
    assert os.environ["SOFTHSM2_CONF"] == str(hsm.token.conf_path)


def test_softhsm_errors_never_show_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "softhsm2-util"
    fake.write_text(
        '#!/bin/sh\ncase "$*" in *--init-token*) echo "rejected: $*" >&2; exit 1;; esac\n'
    )
    fake.chmod(0o700)
    monkeypatch.setattr(softhsm_module, "_util_path", lambda: str(fake))
    token = SoftHsmToken(tmp_path / "hsm", "x", "so-secret-pin", "user-secret-pin")
    with pytest.raises(SoftHsmError) as info:
        token.ensure()
    message = str(info.value)
    assert "--init-token" in message and "***" in message
    assert "so-secret-pin" not in message and "user-secret-pin" not in message
    with pytest.raises(SoftHsmError, match="4 to 255"):
        SoftHsmToken(tmp_path / "hsm", "x", "12", "user-secret-pin").ensure()


def test_module_path_detection(tmp_path: Path) -> None:
    detected = default_module_path(environ={})
    assert Path(detected).is_file() and "softhsm2" in detected
    assert default_module_path(environ={"GRIDPOINTS_PKCS11_MODULE": detected}) == detected
    with pytest.raises(ModuleLoadError, match="does not name an existing file"):
        default_module_path(environ={"GRIDPOINTS_PKCS11_MODULE": str(tmp_path / "none.so")})
    with pytest.raises(ModuleLoadError, match="does not exist"):
        Pkcs11Signer.open("x", token_label=TOKEN, pin=USER_PIN, module=tmp_path / "none.so")


_REINITIALIZE_SCRIPT = """
import secrets, sys
from gridpoints_signers import (
    Pkcs11Signer, SoftHsmError, SoftHsmToken, StaleSessionError, recover_address,
)
base = sys.argv[1]
pins = {"so_pin": "so-pin-1234", "user_pin": "user-pin-1234"}
a = SoftHsmToken.create(base + "/a", "tok-a", **pins)
b = SoftHsmToken.create(base + "/b", "tok-b", **pins)
a.activate()
signer_a = Pkcs11Signer.generate("k", token_label="tok-a", pin=pins["user_pin"])
try:
    b.activate()
    print("activate-b: allowed")
except SoftHsmError:
    print("activate-b: refused")
module = b.activate(reinitialize=True)
print("tokens:", module.token_labels())
try:
    signer_a.sign_digest(bytes(32))
except StaleSessionError:
    print("old signer: stale")
signer_b = Pkcs11Signer.generate("k", token_label="tok-b", pin=pins["user_pin"])
digest = secrets.token_bytes(32)
print("new signer:", recover_address(digest, signer_b.sign_digest(digest)) == signer_b.address)
"""


def test_softhsm_reads_its_configuration_at_initialisation(tmp_path: Path) -> None:
    """Switching token directories in one process needs C_Finalize + C_Initialize.

    Runs in a subprocess because re-initialising would end this session's signers.
    """
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    result = subprocess.run(
        [sys.executable, "-c", _REINITIALIZE_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "activate-b: refused",
        "tokens: ['tok-b']",
        "old signer: stale",
        "new signer: True",
    ]


# ----------------------------------------------------------------------------- development key


def test_dev_key_file_is_private_and_never_overwritten(dev_key_path: Path) -> None:
    assert stat.S_IMODE(dev_key_path.stat().st_mode) == 0o600
    before = dev_key_path.read_bytes()
    keystore = json.loads(before)
    assert keystore["crypto"]["kdf"] == "scrypt"
    with pytest.raises(KeyExistsError, match="refusing to overwrite"):
        DevKeySigner.create(dev_key_path, DEV_PASSWORD)
    assert dev_key_path.read_bytes() == before
    assert [p.name for p in dev_key_path.parent.iterdir()] == [dev_key_path.name]


def test_dev_key_opens_with_its_password_only(dev_key_path: Path, dev_key: DevKeySigner) -> None:
    keystore = json.loads(dev_key_path.read_text())
    assert dev_key.address.lower() == "0x" + keystore["address"].lower().removeprefix("0x")
    with pytest.raises(KeystoreError, match="wrong password"):
        DevKeySigner.open(dev_key_path, "not-the-password")
    with pytest.raises(KeyNotFoundError):
        DevKeySigner.open(dev_key_path.with_name("absent.json"), DEV_PASSWORD)


def test_dev_key_refuses_a_readable_file(dev_key_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    copy.write_bytes(dev_key_path.read_bytes())
    copy.chmod(0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        DevKeySigner.open(copy, DEV_PASSWORD)


def test_dev_key_password_from_environment(
    dev_key_path: Path, dev_key: DevKeySigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRIDPOINTS_DEVKEY_PASSWORD", raising=False)
    with pytest.raises(KeystoreError, match="GRIDPOINTS_DEVKEY_PASSWORD"):
        DevKeySigner.open(dev_key_path)
    monkeypatch.setenv("GRIDPOINTS_DEVKEY_PASSWORD", DEV_PASSWORD)
    assert DevKeySigner.open(dev_key_path).address == dev_key.address


def test_dev_key_warns_on_every_signature(dev_key: DevKeySigner) -> None:
    assert isinstance(dev_key, Signer)
    digests = [secrets.token_bytes(32) for _ in range(5)]
    with pytest.warns(DevelopmentKeyWarning, match=WARNING_TEXT) as record:
        signatures = [dev_key.sign_digest(d) for d in digests]
    assert sum(issubclass(w.category, DevelopmentKeyWarning) for w in record) == len(digests)
    for digest, signature in zip(digests, signatures, strict=True):
        _assert_canonical(signature, digest, dev_key.address)


def test_dev_key_warning_reaches_stderr_every_time() -> None:
    """Python shows a warning once per call site by default; this one must not go quiet."""
    script = (
        "from gridpoints_signers import DevKeySigner\n"
        "signer = DevKeySigner(bytes.fromhex('11' * 32))\n"
        "for _ in range(3):\n"
        "    signer.sign_digest(bytes(32))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr.count(f"DevelopmentKeyWarning: {WARNING_TEXT}") == 3


# --------------------------------------------------------------------------------- base helpers


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=repr)
def test_bad_digest_is_rejected_everywhere(
    digest: object, station_key: Pkcs11Signer, dev_key: DevKeySigner
) -> None:
    for signer in (station_key, dev_key):
        with pytest.raises(InvalidDigestError):
            signer.sign_digest(digest)  # type: ignore[arg-type]
    with pytest.raises(InvalidDigestError):
        to_low_s_with_recovery(1, 1, digest, dev_key.address)  # type: ignore[arg-type]
    with pytest.raises(InvalidDigestError):
        recover_address(digest, bytes(65))  # type: ignore[arg-type]


def test_low_s_normalisation_and_recovery_id() -> None:
    key = coincurve.PrivateKey(bytes.fromhex("22" * 32))
    address = Account.from_key(key.secret).address
    sig = key.sign_recoverable(KNOWN_DIGEST, hasher=None)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    low = to_low_s_with_recovery(r, s, KNOWN_DIGEST, address)
    assert low == sig[:64] + bytes([27 + sig[64]])  # libsecp256k1 already signs low-s
    assert to_low_s_with_recovery(r, SECP256K1_N - s, KNOWN_DIGEST, address) == low
    assert to_low_s_with_recovery(r, s, KNOWN_DIGEST, address.lower()) == low

    other = Account.from_key(bytes.fromhex("33" * 32)).address
    with pytest.raises(RecoveryError, match=other):
        to_low_s_with_recovery(r, s, KNOWN_DIGEST, other)
    for bad_r, bad_s in ((0, s), (r, 0), (SECP256K1_N, s), (r, SECP256K1_N)):
        with pytest.raises(InvalidSignatureError):
            to_low_s_with_recovery(bad_r, bad_s, KNOWN_DIGEST, address)
    with pytest.raises(ValueError, match="not an Ethereum address"):
        to_low_s_with_recovery(r, s, KNOWN_DIGEST, "0x1234")


def test_split_signature_accepts_only_the_canonical_form() -> None:
    key = coincurve.PrivateKey(bytes.fromhex("44" * 32))
    address = Account.from_key(key.secret).address
    sig = key.sign_recoverable(KNOWN_DIGEST, hasher=None)
    canonical = to_low_s_with_recovery(
        int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), KNOWN_DIGEST, address
    )
    assert recover_address(KNOWN_DIGEST, canonical) == address
    high_s = canonical[:32] + (SECP256K1_N - split_signature(canonical)[1]).to_bytes(32, "big")
    with pytest.raises(InvalidSignatureError, match="low-s"):
        split_signature(high_s + bytes([55 - canonical[64]]))
    with pytest.raises(InvalidSignatureError, match="v must be 27 or 28"):
        split_signature(canonical[:64] + bytes([canonical[64] - 27]))
    with pytest.raises(InvalidSignatureError, match="65 bytes"):
        split_signature(canonical[:64])


def test_address_from_public_key() -> None:
    one = coincurve.PrivateKey((1).to_bytes(32, "big")).public_key
    assert (
        address_from_public_key(one.format(compressed=False))
        == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    )
    with pytest.raises(InvalidPublicKeyError, match="uncompressed"):
        address_from_public_key(one.format(compressed=True))
    with pytest.raises(InvalidPublicKeyError, match="uncompressed"):
        address_from_public_key(one.format(compressed=False)[1:])
    with pytest.raises(InvalidPublicKeyError, match="not a point"):
        address_from_public_key(b"\x04" + b"\x01" * 64)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=SECP256K1_N - 1))
def test_address_matches_eth_account(secret: int) -> None:
    key = secret.to_bytes(32, "big")
    point = coincurve.PrivateKey(key).public_key.format(compressed=False)
    assert address_from_public_key(point) == Account.from_key(key).address
