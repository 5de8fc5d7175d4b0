"""DICOM over TLS: the SCP against pynetdicom and dcmtk's storescu, certificates made here.

The right client certificate lands; a certificate from another CA, an expired one, none at all
(when one is required) and plain TCP are refused, counted as failed handshakes; a renewed
certificate serves the next association without restarting the listener.
"""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from agent.dicom.scp import DicomListener
from agent.dicom.scu import RequestorEngine, Scu, SourceAddress, SourceError
from agent.dicom.status import Status
from agent.dicom.tls import (
    MODERN_TLS12_CIPHERS,
    TlsContexts,
    TlsError,
    TlsFiles,
    certificate_not_after,
    client_context,
)
from agent.rejections import RejectionReason
from agent.state import AgentState
from tests.support.certificates import CertificateAuthority, Issued
from tests.support.dicom_factory import make_instance, write_files
from tests.support.environment import require_executable, tool_env

StartListener = Callable[..., DicomListener]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, "site")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("agent")


@pytest.fixture
def tls_listener(
    start_listener: StartListener, ca: CertificateAuthority, server_cert: Issued
) -> DicomListener:
    return start_listener(tls=TlsContexts(server_cert.tls_files(ca.cert)))


def instance() -> Dataset:
    return make_instance(
        patient_id="TLSTEST",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="tls series",
        study_description="tls study",
    )


def associate(port: int, context: ssl.SSLContext | None) -> Association:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    tls_args = None if context is None else (context, "localhost")
    return ae.associate("127.0.0.1", port, ae_title="CONNECTOR", tls_args=tls_args)


def client_with(client: Issued, trusted_ca: Path) -> ssl.SSLContext:
    return client_context(TlsFiles(client.cert, client.key, trusted_ca))


def failed_handshakes(listener: DicomListener, *, awaiting: int = 0) -> int:
    """The listener's failed TLS handshakes; with `awaiting`, first wait (up to 10 s) until at
    least that many are counted: the client can see its handshake fail and exit before the
    listener's thread has recorded it."""
    deadline = time.monotonic() + 10
    while True:
        count = sum(
            count
            for (reason, _), count in listener.rejections.counts().items()
            if reason == RejectionReason.tls_handshake_failed
        )
        if count >= awaiting or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def test_a_client_with_a_certificate_from_the_site_ca_stores(
    tls_listener: DicomListener, ca: CertificateAuthority, state: AgentState
) -> None:
    assoc = associate(tls_listener.port, client_with(ca.issue("scanner"), ca.cert))
    assert assoc.is_established
    try:
        cipher = assoc.dul.socket.socket.cipher()  # type: ignore[union-attr]
        assert cipher[1] in ("TLSv1.2", "TLSv1.3")
        assert assoc.send_c_store(instance()).Status == Status.SUCCESS
    finally:
        assoc.release()
    assert state.stats().spooled_count == 1
    assert failed_handshakes(tls_listener) == 0


def test_a_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, tls_listener: DicomListener, ca: CertificateAuthority
) -> None:
    stranger = CertificateAuthority(tmp_path, "stranger").issue("scanner")

    assoc = associate(tls_listener.port, client_with(stranger, ca.cert))

    assert not assoc.is_established
    assert failed_handshakes(tls_listener, awaiting=1) == 1


def test_an_expired_client_certificate_is_refused(
    tls_listener: DicomListener, ca: CertificateAuthority
) -> None:
    expired = ca.issue("old-scanner", expired=True)

    assoc = associate(tls_listener.port, client_with(expired, ca.cert))

    assert not assoc.is_established
    assert failed_handshakes(tls_listener, awaiting=1) == 1


def test_a_client_without_a_certificate_is_refused_when_one_is_required(
    tls_listener: DicomListener, ca: CertificateAuthority
) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=str(ca.cert))

    assoc = associate(tls_listener.port, anonymous)

    assert not assoc.is_established
    assert failed_handshakes(tls_listener, awaiting=1) == 1


def test_a_client_without_a_certificate_stores_when_none_is_required(
    start_listener: StartListener, ca: CertificateAuthority, server_cert: Issued
) -> None:
    files = server_cert.tls_files(ca.cert, require_client_cert=False)
    listener = start_listener(tls=TlsContexts(files))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=str(ca.cert))

    assoc = associate(listener.port, anonymous)

    assert assoc.is_established
    assoc.release()


def test_plain_tcp_is_refused_and_the_listener_keeps_serving_tls(
    tls_listener: DicomListener, ca: CertificateAuthority
) -> None:
    assert not associate(tls_listener.port, None).is_established
    assert failed_handshakes(tls_listener, awaiting=1) == 1

    assoc = associate(tls_listener.port, client_with(ca.issue("scanner"), ca.cert))
    assert assoc.is_established
    assoc.release()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_older_than_1_2_is_refused(
    tls_listener: DicomListener, ca: CertificateAuthority
) -> None:
    old = client_with(ca.issue("scanner"), ca.cert)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        old.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.fail("this OpenSSL cannot even offer TLS 1.1 ciphers")

    assert not associate(tls_listener.port, old).is_established
    assert failed_handshakes(tls_listener, awaiting=1) == 1


def test_a_renewed_certificate_written_over_the_old_one_serves_the_next_association(
    tls_listener: DicomListener, ca: CertificateAuthority, server_cert: Issued
) -> None:
    client = client_with(ca.issue("scanner"), ca.cert)
    first = associate(tls_listener.port, client)
    before = first.dul.socket.socket.getpeercert()  # type: ignore[union-attr]
    first.release()

    renewed = ca.issue(
        "agent",
        valid_for=dt.timedelta(days=700),
        cert_path=server_cert.cert,
        key_path=server_cert.key,
    )
    second = associate(tls_listener.port, client)
    after = second.dul.socket.socket.getpeercert()  # type: ignore[union-attr]
    second.release()

    assert before is not None
    assert after is not None
    assert before["serialNumber"] != after["serialNumber"]
    assert ssl.cert_time_to_seconds(str(after["notAfter"])) == pytest.approx(
        renewed.not_after.timestamp(), abs=1
    )


def test_switching_to_another_ca_refuses_the_old_clients_at_once(
    tmp_path: Path,
    start_listener: StartListener,
    ca: CertificateAuthority,
    server_cert: Issued,
) -> None:
    contexts = TlsContexts(server_cert.tls_files(ca.cert))
    listener = start_listener(tls=contexts)
    new_ca = CertificateAuthority(tmp_path, "new")
    new_server = new_ca.issue("agent")
    old_client = client_with(ca.issue("scanner"), ca.cert)
    new_client = client_with(new_ca.issue("scanner"), new_ca.cert)

    contexts.use(new_server.tls_files(new_ca.cert))

    assert not associate(listener.port, old_client).is_established
    assoc = associate(listener.port, new_client)
    assert assoc.is_established
    assoc.release()


def test_files_that_cannot_be_used_are_refused_with_the_key_named(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    with pytest.raises(TlsError, match=r"dicom\.tls\.ca"):
        TlsContexts(TlsFiles(server_cert.cert, server_cert.key, tmp_path / "missing.pem"))
    other_key = ca.issue("other").key
    with pytest.raises(TlsError, match=r"dicom\.tls\.cert/key"):
        TlsContexts(TlsFiles(server_cert.cert, other_key, ca.cert))


def test_a_broken_renewal_keeps_the_certificate_in_force_and_says_why(
    tls_listener: DicomListener, ca: CertificateAuthority, server_cert: Issued
) -> None:
    contexts = TlsContexts(server_cert.tls_files(ca.cert))
    server_cert.cert.write_text("not a certificate\n")

    assert contexts.not_after == pytest.approx(server_cert.not_after.timestamp(), abs=1)
    assert contexts.problem is not None
    assert "dicom.tls.cert" in contexts.problem


def test_the_expiry_of_a_leaf_certificate_is_read(ca: CertificateAuthority) -> None:
    leaf = ca.issue("agent", valid_for=dt.timedelta(days=20))

    assert certificate_not_after(leaf.cert) == pytest.approx(leaf.not_after.timestamp(), abs=1)


def test_tls_1_2_suites_are_ecdhe_with_authenticated_encryption() -> None:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.set_ciphers(MODERN_TLS12_CIPHERS)
    tls12 = [c for c in probe.get_ciphers() if c["protocol"] == "TLSv1.2"]

    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


@pytest.mark.dcmtk
def test_storescu_with_tls_and_the_site_certificate_lands(
    tmp_path: Path, tls_listener: DicomListener, ca: CertificateAuthority, state: AgentState
) -> None:
    scanner = ca.issue("dcmtk")
    files = write_files([instance()], tmp_path / "in")

    result = storescu_tls(tls_listener.port, scanner, ca.cert, files)

    assert result.returncode == 0, result.stderr
    assert state.stats().spooled_count == 1


@pytest.mark.dcmtk
def test_storescu_with_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, tls_listener: DicomListener, ca: CertificateAuthority, state: AgentState
) -> None:
    stranger = CertificateAuthority(tmp_path, "stranger").issue("dcmtk")
    files = write_files([instance()], tmp_path / "in")

    result = storescu_tls(tls_listener.port, stranger, ca.cert, files)

    assert result.returncode != 0
    assert state.stats().spooled_count == 0
    assert failed_handshakes(tls_listener, awaiting=1) == 1


def storescu_tls(
    port: int, client: Issued, ca: Path, files: list[Path]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_executable("storescu"),
            "+tls",
            str(client.key),
            str(client.cert),
            "+cf",
            str(ca),
            "-aet",
            "SCANNER",
            "-aec",
            "CONNECTOR",
            "127.0.0.1",
            str(port),
            *(str(path) for path in files),
        ],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_scu_echoes_over_mutual_tls_and_is_refused_with_a_foreign_certificate(
    tmp_path: Path,
    tls_listener: DicomListener,
    ca: CertificateAuthority,
    requestor_engine: RequestorEngine,
) -> None:
    source = SourceAddress("CONNECTOR", "127.0.0.1", tls_listener.port)
    own = ca.issue("puller").tls_files(ca.cert)
    foreign = CertificateAuthority(tmp_path, "stranger").issue("puller").tls_files(ca.cert)

    engine = requestor_engine
    Scu(source, calling_ae_title="PULLER", timeout=10, tls=own, engine=engine).echo()
    with pytest.raises(SourceError):
        Scu(source, calling_ae_title="PULLER", timeout=10, tls=foreign, engine=engine).echo()
    with pytest.raises(SourceError):
        Scu(source, calling_ae_title="PULLER", timeout=10, engine=engine).echo()
