"""Station keys held in a PKCS#11 token (SoftHSM2 in tests and demos, an HSM or TPM in production).

The private key is generated inside the token as sensitive and non-extractable and never
leaves it; this module only asks the token for raw ECDSA signatures over the 32-byte digest
(``CKM_ECDSA``, output ``r || s``) and adds what Ethereum needs on top (low-s, recovery id).

Behaviour of python-pkcs11 0.10 and SoftHSM2 2.6 that shaped this module:

* ``pkcs11.lib(path)`` dlopens the module and calls ``C_Initialize`` once; python-pkcs11 caches
  it by the path string. Two spellings of one file would initialise it twice and fail, so
  :class:`Pkcs11Module` keys its cache by the resolved real path.
* SoftHSM2 reads ``SOFTHSM2_CONF`` (and scans its token directory for tokens) in
  ``C_Initialize``, not when the library is loaded. Changing the variable later does nothing
  until ``C_Finalize`` + ``C_Initialize`` (:meth:`Pkcs11Module.reinitialize`), which also
  invalidates every session; tokens created by ``softhsm2-util`` after initialisation are
  likewise invisible until then. Key objects written by another process do show up at once.
* python-pkcs11 calls ``C_Initialize(NULL)``, which tells the module the application will not
  call it from several threads at once (SoftHSM2 then disables its own locking). Every call
  into a module therefore goes through that module's lock here.
* Login state belongs to the application and token, not the session: a second ``C_Login`` on a
  token that is already logged in fails with ``CKR_USER_ALREADY_LOGGED_IN`` *without checking
  the PIN*, and every new session inherits the login. So each token is logged in once per
  process (an "anchor" session keeps the login alive) and later opens compare the PIN with
  the one that succeeded, keeping a wrong PIN a clear error whatever else the process holds.
* python-pkcs11's default EC signing mechanism is ``CKM_ECDSA_SHA512``, which would hash the
  digest again (and SoftHSM2 2.6 does not offer it); signing always names ``CKM_ECDSA``.
* SoftHSM2 returns ``CKA_EC_POINT`` DER-wrapped (``04 41 04 X Y``), as PKCS#11 specifies; some
  modules return the bare point, so both are accepted.

PINs come from the environment or a file (:func:`resolve_pin`), never from a command line by
default, and are never logged or put into exception messages.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sysconfig
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from gridpoints_signers.base import (
    AmbiguousKeyError,
    HsmError,
    InsecureKeyError,
    InvalidPublicKeyError,
    KeyExistsError,
    KeyNotFoundError,
    ModuleLoadError,
    PinUnavailableError,
    SignerError,
    StaleSessionError,
    TokenLoginError,
    TokenNotFoundError,
    UnsupportedKeyError,
    address_from_public_key,
    require_digest,
    to_low_s_with_recovery,
)

if TYPE_CHECKING:
    # pkcs11.lib is a caching factory function; the class it returns lives in the extension.
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = logging.getLogger(__name__)

MODULE_ENV: Final = "GRIDPOINTS_PKCS11_MODULE"
PIN_ENV: Final = "GRIDPOINTS_PKCS11_PIN"
PIN_FILE_ENV: Final = "GRIDPOINTS_PKCS11_PIN_FILE"

# Debian/Ubuntu put SoftHSM2 under the multiarch directory on most architectures and under
# /usr/lib/softhsm on some; Fedora and Homebrew use their own prefixes.
SOFTHSM_MODULE_CANDIDATES: Final[tuple[str, ...]] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# DER of the named-curve OID 1.3.132.0.10; tokens are asked for exactly this curve.
SECP256K1_EC_PARAMS: Final = encode_named_curve_parameters("secp256k1")

_PUBLIC_TEMPLATE: Final[dict[Attribute, Any]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
}
_PRIVATE_TEMPLATE: Final[dict[Attribute, Any]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    # A station key signs records and nothing else; ECDH with it would only widen its use.
    Attribute.DERIVE: False,
}
_REQUIRED_MECHANISMS: Final = (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA)
_RAW_SIGNATURE_LENGTH: Final = 64


def _softhsm_candidates() -> tuple[str, ...]:
    multiarch = sysconfig.get_config_var("MULTIARCH")
    extra = (f"/usr/lib/{multiarch}/softhsm/libsofthsm2.so",) if multiarch else ()
    return tuple(dict.fromkeys(SOFTHSM_MODULE_CANDIDATES + extra))


def default_module_path(environ: Mapping[str, str] | None = None) -> str:
    """The PKCS#11 module to load: ``$GRIDPOINTS_PKCS11_MODULE``, else a SoftHSM2 install.

    An explicit setting that points nowhere is an error rather than a silent fall-back to
    SoftHSM2: a production station must never end up signing with a software token by accident.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(MODULE_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise ModuleLoadError(f"{MODULE_ENV}={explicit} does not name an existing file")
        return explicit
    for candidate in _softhsm_candidates():
        if Path(candidate).is_file():
            return candidate
    raise ModuleLoadError(
        "no PKCS#11 module found: set "
        f"{MODULE_ENV} to the module's path, or install SoftHSM2 (Debian package softhsm2); "
        f"searched {', '.join(_softhsm_candidates())}"
    )


def _resolve_module_path(module: str | os.PathLike[str] | None) -> str:
    raw = default_module_path() if module is None else os.fspath(module)
    path = Path(raw)
    if not path.is_file():
        raise ModuleLoadError(f"PKCS#11 module {raw} does not exist")
    return str(path.resolve())


# ---------------------------------------------------------------------------------- PIN sources


def pin_from_env(var: str = PIN_ENV, environ: Mapping[str, str] | None = None) -> str:
    """The user PIN from an environment variable (its value is never echoed in errors)."""
    env = os.environ if environ is None else environ
    pin = env.get(var)
    if not pin:
        raise PinUnavailableError(f"no PKCS#11 user PIN: environment variable {var} is not set")
    return pin


def pin_from_file(path: str | os.PathLike[str]) -> str:
    """The user PIN from a file such as a container secret; one trailing newline is dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PinUnavailableError(
            f"cannot read PKCS#11 PIN file {os.fspath(path)}: {exc.strerror}"
        ) from exc
    pin = text.removesuffix("\n").removesuffix("\r")
    if not pin:
        raise PinUnavailableError(f"PKCS#11 PIN file {os.fspath(path)} is empty")
    return pin


def resolve_pin(environ: Mapping[str, str] | None = None) -> str:
    """The user PIN from ``$GRIDPOINTS_PKCS11_PIN_FILE`` or ``$GRIDPOINTS_PKCS11_PIN``.

    Both set is refused: the operator meant one of them and guessing which could lock the token
    after a few wrong attempts.
    """
    env = os.environ if environ is None else environ
    pin_file = env.get(PIN_FILE_ENV)
    if pin_file and env.get(PIN_ENV):
        raise PinUnavailableError(f"both {PIN_FILE_ENV} and {PIN_ENV} are set; set only one")
    if pin_file:
        return pin_from_file(pin_file)
    if env.get(PIN_ENV):
        return pin_from_env(PIN_ENV, env)
    raise PinUnavailableError(f"no PKCS#11 user PIN: set {PIN_FILE_ENV} (preferred) or {PIN_ENV}")


# ------------------------------------------------------------------------------- module state


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


@dataclass(slots=True)
class _Login:
    pin_tag: bytes
    anchor: pkcs11.Session  # holds the token's login for the process; never used to sign


class Pkcs11Module:
    """A PKCS#11 module loaded in this process, with the state PKCS#11 keeps per process.

    Obtain it with :meth:`load`; there is one instance per module file.
    """

    _registry: ClassVar[dict[str, Pkcs11Module]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()
    # Keys the in-memory PIN fingerprints so that they are useless outside this process.
    _pin_key: ClassVar[bytes] = secrets.token_bytes(32)

    def __init__(self, path: str, lib: Pkcs11Lib) -> None:
        self.path = path
        self.lib = lib
        self.lock = threading.RLock()
        self.generation = 0
        self.softhsm_conf = os.environ.get("SOFTHSM2_CONF")
        self._logins: dict[bytes, _Login] = {}

    def __repr__(self) -> str:
        return f"Pkcs11Module({self.path!r}, generation={self.generation})"

    @classmethod
    def load(cls, module: str | os.PathLike[str] | None = None) -> Pkcs11Module:
        """Load (once per process) and initialise the module; ``None`` means auto-detect."""
        path = _resolve_module_path(module)
        with cls._registry_lock:
            existing = cls._registry.get(path)
            if existing is not None:
                return existing
            try:
                lib = pkcs11.lib(path)
            except p11e.PKCS11Error as exc:
                raise ModuleLoadError(
                    f"cannot load PKCS#11 module {path}: {_describe(exc)}"
                ) from exc
            loaded = cls(path, lib)
            cls._registry[path] = loaded
            log.debug("loaded PKCS#11 module %s (%s)", path, lib.manufacturer_id)
            return loaded

    @classmethod
    def loaded(cls, module: str | os.PathLike[str] | None = None) -> Pkcs11Module | None:
        """The module if this process already loaded it, without loading it."""
        path = _resolve_module_path(module)
        with cls._registry_lock:
            return cls._registry.get(path)

    def reinitialize(self) -> None:
        """``C_Finalize`` + ``C_Initialize``: re-reads configuration such as ``SOFTHSM2_CONF``.

        Every session of this module ends, so every signer opened earlier fails from now on
        with :class:`StaleSessionError` and must be opened again.
        """
        with self.lock:
            self.generation += 1
            try:
                self.lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmError(f"re-initialising {self.path} failed: {_describe(exc)}") from exc
            finally:
                self._logins.clear()
            self.softhsm_conf = os.environ.get("SOFTHSM2_CONF")
            log.info("re-initialised PKCS#11 module %s", self.path)

    def token_labels(self) -> list[str]:
        """Labels of the initialised tokens present, for diagnostics."""
        with self.lock:
            return sorted(t.label for t in self._present_tokens() if t.label)

    def _present_tokens(self) -> list[pkcs11.Token]:
        try:
            return [slot.get_token() for slot in self.lib.get_slots(token_present=True)]
        except p11e.PKCS11Error as exc:
            raise HsmError(f"listing tokens of {self.path} failed: {_describe(exc)}") from exc

    def find_token(self, token_label: str) -> pkcs11.Token:
        with self.lock:
            tokens = self._present_tokens()
            matches = [t for t in tokens if t.label == token_label]
            if not matches:
                available = sorted(t.label for t in tokens if t.label) or ["none"]
                raise TokenNotFoundError(
                    f"no PKCS#11 token labelled {token_label!r} in {self.path} "
                    f"(tokens present: {', '.join(repr(a) for a in available)})"
                )
            if len(matches) > 1:
                raise TokenNotFoundError(
                    f"{len(matches)} tokens are labelled {token_label!r} in {self.path}; "
                    "token labels must be unique"
                )
            return matches[0]

    def _pin_tag(self, pin: str) -> bytes:
        return hmac.new(self._pin_key, pin.encode("utf-8"), "sha256").digest()

    def _login(self, token: pkcs11.Token, pin: str) -> None:
        tag = self._pin_tag(pin)
        login = self._logins.get(token.serial)
        if login is not None:
            if not hmac.compare_digest(login.pin_tag, tag):
                raise TokenLoginError(f"incorrect user PIN for token {token.label!r}")
            return
        flags = TokenFlag(token.flags)
        if TokenFlag.USER_PIN_LOCKED in flags:
            raise TokenLoginError(
                f"the user PIN of token {token.label!r} is locked after too many wrong attempts; "
                "the security officer must reset it"
            )
        if TokenFlag.USER_PIN_INITIALIZED not in flags:
            raise TokenLoginError(f"token {token.label!r} has no user PIN set; initialise it first")
        try:
            anchor = token.open(user_pin=pin)
        except p11e.PinIncorrect as exc:
            raise TokenLoginError(f"incorrect user PIN for token {token.label!r}") from exc
        except p11e.PinLocked as exc:
            raise TokenLoginError(f"the user PIN of token {token.label!r} is locked") from exc
        except (p11e.PinLenRange, p11e.PinInvalid) as exc:
            raise TokenLoginError(
                f"the user PIN for token {token.label!r} has an invalid length or characters"
            ) from exc
        except p11e.PinExpired as exc:
            raise TokenLoginError(
                f"the user PIN of token {token.label!r} has expired and must be changed"
            ) from exc
        except p11e.UserAlreadyLoggedIn as exc:
            raise TokenLoginError(
                f"token {token.label!r} is already logged in by code in this process that did "
                "not go through gridpoints_signers.pkcs11, so the PIN cannot be checked; "
                "open sessions with open_session() instead"
            ) from exc
        except p11e.PKCS11Error as exc:
            raise TokenLoginError(
                f"login to token {token.label!r} failed: {_describe(exc)}"
            ) from exc
        self._logins[token.serial] = _Login(tag, anchor)

    def open_session(self, token_label: str, pin: str, *, rw: bool = False) -> pkcs11.Session:
        """A new session on the token, logged in as the user.

        The caller closes it (``with`` works). Only this module's lock makes concurrent use
        safe, so raw calls on the session from several threads need :attr:`lock`.
        """
        with self.lock:
            token = self.find_token(token_label)
            self._login(token, pin)
            try:
                return token.open(rw=rw)
            except p11e.PKCS11Error as exc:
                raise HsmError(
                    f"opening a session on token {token_label!r} failed: {_describe(exc)}"
                ) from exc

    def require_mechanisms(self, token_label: str) -> None:
        """Fail early and clearly if the token cannot make secp256k1 ECDSA keys at all."""
        with self.lock:
            token = self.find_token(token_label)
            try:
                available = set(token.slot.get_mechanisms())
            except p11e.PKCS11Error as exc:
                raise HsmError(f"listing mechanisms failed: {_describe(exc)}") from exc
            missing = [m.name for m in _REQUIRED_MECHANISMS if m not in available]
            if missing:
                raise UnsupportedKeyError(
                    f"token {token_label!r} lacks mechanism(s) {', '.join(missing)}"
                )


def open_session(
    token_label: str,
    *,
    pin: str | None = None,
    module: str | os.PathLike[str] | None = None,
    rw: bool = False,
) -> pkcs11.Session:
    """A logged-in raw python-pkcs11 session, for administration and tests.

    Goes through the same per-process login as the signers; a raw ``Token.open(user_pin=...)``
    would fail once any signer holds the token.
    """
    return Pkcs11Module.load(module).open_session(
        token_label, pin if pin is not None else resolve_pin(), rw=rw
    )


# --------------------------------------------------------------------------------- key checks


def _attribute(obj: pkcs11.Object, attribute: Attribute) -> Any | None:
    """The attribute's value, or ``None`` if the token does not report it."""
    try:
        return obj[attribute]
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None


def unwrap_ec_point(value: bytes) -> bytes:
    """The uncompressed point from ``CKA_EC_POINT`` (DER OCTET STRING or, non-standard, bare)."""
    data = bytes(value)
    if len(data) == 65 and data[0] == 0x04:
        return data
    if len(data) == 67 and data[0] == 0x04 and data[1] == 0x41 and data[2] == 0x04:
        return data[2:]
    raise InvalidPublicKeyError(
        f"CKA_EC_POINT is not an uncompressed secp256k1 point ({len(data)} bytes)"
    )


def _check_private_key(key: pkcs11.Object, where: str) -> None:
    key_type = _attribute(key, Attribute.KEY_TYPE)
    if key_type != KeyType.EC:
        raise UnsupportedKeyError(f"{where} is not an EC key (CKA_KEY_TYPE={key_type!r})")
    params = _attribute(key, Attribute.EC_PARAMS)
    if params is not None and bytes(params) != SECP256K1_EC_PARAMS:
        raise UnsupportedKeyError(f"{where} is not on secp256k1 (EC_PARAMS {bytes(params).hex()})")

    problems = []
    if _attribute(key, Attribute.SENSITIVE) is not True:
        problems.append("CKA_SENSITIVE is not true")
    if _attribute(key, Attribute.EXTRACTABLE) is not False:
        problems.append("CKA_EXTRACTABLE is not false")
    # A key switched to sensitive/non-extractable after creation may already have been copied
    # out; the token remembers that in these two attributes.
    if _attribute(key, Attribute.ALWAYS_SENSITIVE) is False:
        problems.append("CKA_ALWAYS_SENSITIVE is false (it was readable at some point)")
    if _attribute(key, Attribute.NEVER_EXTRACTABLE) is False:
        problems.append("CKA_NEVER_EXTRACTABLE is false (it was extractable at some point)")
    if problems:
        raise InsecureKeyError(
            f"refusing {where}: {'; '.join(problems)}. A station key must be generated inside "
            "the token as sensitive and non-extractable (use Pkcs11Signer.generate)"
        )

    if _attribute(key, Attribute.SIGN) is not True:
        raise UnsupportedKeyError(f"{where} is not permitted to sign (CKA_SIGN is not true)")
    if _attribute(key, Attribute.ALWAYS_AUTHENTICATE) is True:
        raise UnsupportedKeyError(
            f"{where} demands the PIN again for every signature (CKA_ALWAYS_AUTHENTICATE); "
            "unsupported because the signer would have to keep the PIN in memory"
        )


def _public_point(key: pkcs11.Object, where: str) -> bytes:
    if _attribute(key, Attribute.KEY_TYPE) != KeyType.EC:
        raise UnsupportedKeyError(f"{where} is not an EC key")
    params = _attribute(key, Attribute.EC_PARAMS)
    if params is None or bytes(params) != SECP256K1_EC_PARAMS:
        shown = "missing" if params is None else bytes(params).hex()
        raise UnsupportedKeyError(f"{where} is not on secp256k1 (EC_PARAMS {shown})")
    point = _attribute(key, Attribute.EC_POINT)
    if point is None:
        raise InvalidPublicKeyError(f"{where} has no readable CKA_EC_POINT")
    return unwrap_ec_point(point)


def _one_object(session: pkcs11.Session, object_class: ObjectClass, label: str) -> pkcs11.Object:
    found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
    kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
    if not found:
        raise KeyNotFoundError(f"no {kind} key labelled {label!r} on token {session.token.label!r}")
    if len(found) > 1:
        raise AmbiguousKeyError(
            f"{len(found)} {kind} keys are labelled {label!r} on token {session.token.label!r}"
        )
    return found[0]


def _close_quietly(session: pkcs11.Session) -> None:
    try:
        session.close()
    except p11e.PKCS11Error:
        log.debug("closing a PKCS#11 session failed", exc_info=True)


# ------------------------------------------------------------------------------------ signer


class Pkcs11Signer:
    """A secp256k1 station key inside a PKCS#11 token. Implements :class:`~.base.Signer`.

    Build it with :meth:`open` or :meth:`generate`. Safe to share between threads; calls into
    the module are serialised (see the module docstring), recovery-id search is not.
    """

    def __init__(
        self,
        module: Pkcs11Module,
        session: pkcs11.Session,
        private_key: SignMixin,
        public_point: bytes,
        *,
        key_label: str,
        token_label: str,
    ) -> None:
        self._module = module
        self._session = session
        self._private_key = private_key
        self._public_point = public_point
        self._address = address_from_public_key(public_point)
        self._key_label = key_label
        self._token_label = token_label
        self._generation = module.generation
        self._closed = False

    @classmethod
    def open(
        cls,
        label: str,
        *,
        token_label: str,
        pin: str | None = None,
        module: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Open the key pair ``label``; refuses keys that are or were exportable.

        ``pin=None`` reads it via :func:`resolve_pin`. The first signature is made here, so a
        mismatched public/private pair fails now rather than on the first record.
        """
        loaded = Pkcs11Module.load(module)
        user_pin = pin if pin is not None else resolve_pin()
        with loaded.lock:
            loaded.require_mechanisms(token_label)
            session = loaded.open_session(token_label, user_pin)
            try:
                where = f"key {label!r} on token {token_label!r}"
                private_key = _one_object(session, ObjectClass.PRIVATE_KEY, label)
                _check_private_key(private_key, f"private {where}")
                if not isinstance(private_key, SignMixin):
                    raise UnsupportedKeyError(f"private {where} is not a key that can sign")
                public_key = _one_object(session, ObjectClass.PUBLIC_KEY, label)
                point = _public_point(public_key, f"public {where}")
                signer = cls(
                    loaded, session, private_key, point, key_label=label, token_label=token_label
                )
                signer.sign_digest(secrets.token_bytes(32))
            except BaseException:
                _close_quietly(session)
                raise
        log.info("opened PKCS#11 key %r on token %r: %s", label, token_label, signer.address)
        return signer

    @classmethod
    def generate(
        cls,
        label: str,
        *,
        token_label: str,
        pin: str | None = None,
        module: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Generate a new secp256k1 key pair inside the token and open it.

        Refuses a label already used by any object on the token: replacing a registered station
        key would orphan it, and a second object with the same label would make :meth:`open`
        ambiguous.
        """
        if not label or not label.strip():
            raise ValueError("a key label is required")
        loaded = Pkcs11Module.load(module)
        user_pin = pin if pin is not None else resolve_pin()
        with loaded.lock:
            loaded.require_mechanisms(token_label)
            with loaded.open_session(token_label, user_pin, rw=True) as session:
                existing = list(session.get_objects({Attribute.LABEL: label}))
                if existing:
                    raise KeyExistsError(
                        f"token {token_label!r} already holds {len(existing)} object(s) labelled "
                        f"{label!r}; refusing to overwrite or shadow an existing key"
                    )
                try:
                    params = session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: SECP256K1_EC_PARAMS}, local=True
                    )
                    params.generate_keypair(
                        store=True,
                        label=label,
                        id=secrets.token_bytes(16),  # pairs the two objects for tools
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        mechanism=Mechanism.EC_KEY_PAIR_GEN,
                        public_template=_PUBLIC_TEMPLATE,
                        private_template=_PRIVATE_TEMPLATE,
                    )
                except (p11e.DomainParamsInvalid, p11e.MechanismInvalid) as exc:
                    raise UnsupportedKeyError(
                        f"token {token_label!r} cannot generate secp256k1 keys: {_describe(exc)}"
                    ) from exc
                except p11e.PKCS11Error as exc:
                    raise HsmError(
                        f"generating key {label!r} on token {token_label!r} failed: "
                        f"{_describe(exc)}"
                    ) from exc
            signer = cls.open(label, token_label=token_label, pin=user_pin, module=module)
        log.info("generated PKCS#11 key %r on token %r: %s", label, token_label, signer.address)
        return signer

    @property
    def address(self) -> str:
        return self._address

    @property
    def public_key(self) -> bytes:
        """Uncompressed point ``0x04 || X || Y``."""
        return self._public_point

    @property
    def key_label(self) -> str:
        return self._key_label

    @property
    def token_label(self) -> str:
        return self._token_label

    def sign_digest(self, digest: bytes) -> bytes:
        message = require_digest(digest)
        with self._module.lock:
            if self._closed:
                raise SignerError(f"signer for key {self._key_label!r} is closed")
            if self._generation != self._module.generation:
                raise StaleSessionError(
                    f"PKCS#11 module {self._module.path} was re-initialised; "
                    f"open key {self._key_label!r} again"
                )
            try:
                raw = self._private_key.sign(message, mechanism=Mechanism.ECDSA)
            except p11e.PKCS11Error as exc:
                raise HsmError(
                    f"token {self._token_label!r} failed to sign with key {self._key_label!r}: "
                    f"{_describe(exc)}"
                ) from exc
        if len(raw) != _RAW_SIGNATURE_LENGTH:
            raise HsmError(f"CKM_ECDSA returned {len(raw)} bytes; expected r || s (64)")
        r = int.from_bytes(raw[:32], "big")
        s = int.from_bytes(raw[32:], "big")
        return to_low_s_with_recovery(r, s, message, self._address)

    def close(self) -> None:
        """End this signer's session; the token stays logged in for other signers."""
        with self._module.lock:
            if self._closed:
                return
            self._closed = True
            if self._generation == self._module.generation:
                _close_quietly(self._session)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Pkcs11Signer(key_label={self._key_label!r}, token_label={self._token_label!r}, "
            f"address={self._address})"
        )
