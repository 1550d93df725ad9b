"""Bundles travel as flat tars; unpacking refuses paths, links and anything but plain files."""

from __future__ import annotations

import io
import tarfile

import pytest

from device.bundle.archive import pack_bundle, unpack_bundle
from device.bundle.manifest import BundleError
from device.bundle.verify import verify_bundle


def test_pack_and_unpack_round_trip(bundle_copy, tmp_path):
    tar = pack_bundle(bundle_copy.path, tmp_path / "bundle.tar")
    with tarfile.open(tar) as archive:
        assert all("/" not in m.name and m.isfile() for m in archive.getmembers())
    out = unpack_bundle(tar, tmp_path / "unpacked")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in bundle_copy.path.iterdir())
    for path in bundle_copy.path.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert verify_bundle(out, bundle_copy.trust_dir).manifest.name == "demo-tiny"


def hostile_tar(path, bundle_dir, extra: tarfile.TarInfo, data: bytes = b""):
    """A tar holding the real bundle files plus one hostile member."""
    with tarfile.open(path, "w") as archive:
        for item in sorted(bundle_dir.iterdir()):
            archive.add(item, arcname=item.name)
        archive.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return path


def member(name, kind=tarfile.REGTYPE, target="", size=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, size
    return info


@pytest.mark.parametrize(
    "extra",
    [
        member("../evil.txt", size=4),
        member("/tmp/evil-absolute.txt", size=4),
        member("sub/nested.txt", size=4),
        member("link.onnx", tarfile.SYMTYPE, target="/etc/passwd"),
        member("hard.onnx", tarfile.LNKTYPE, target="manifest.json"),
        member("subdir", tarfile.DIRTYPE),
        member("fifo", tarfile.FIFOTYPE),
    ],
    ids=["traversal", "absolute", "nested", "symlink", "hardlink", "directory", "fifo"],
)
def test_hostile_members_are_refused_and_nothing_is_extracted(bundle_copy, tmp_path, extra):
    tar = hostile_tar(tmp_path / "hostile.tar", bundle_copy.path, extra, b"evil" if extra.isfile() else b"")
    dest = tmp_path / "out" / "bundle"
    dest.parent.mkdir()
    with pytest.raises(BundleError, match="not a plain top-level file"):
        unpack_bundle(tar, dest)
    assert list(dest.parent.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_a_tar_without_a_manifest_is_refused(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as archive:
        archive.addfile(member("model.onnx", size=3), io.BytesIO(b"abc"))
    with pytest.raises(BundleError, match="holds no manifest.json"):
        unpack_bundle(tmp_path / "x.tar", tmp_path / "out")


def test_a_file_that_is_not_a_tar_is_refused(tmp_path, shared_data):
    with pytest.raises(BundleError, match="not a readable bundle tar"):
        unpack_bundle(shared_data / "audio/birds/Cryp.soui.wav", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpacking_never_replaces_an_existing_directory(bundle_copy, tmp_path):
    tar = pack_bundle(bundle_copy.path, tmp_path / "bundle.tar")
    (tmp_path / "taken").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(tar, tmp_path / "taken")
