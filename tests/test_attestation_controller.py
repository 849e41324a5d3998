"""The attestation controller as the program deploys it: its image, certificate, RBAC, policy and metrics."""

from __future__ import annotations


from components import images as images_module
from components.images import KeylimeImagesArgs, build_specs, tree_digest


def test_the_controller_image_is_built_from_controller_and_loaded_into_the_infra_cluster_only(swtpm):
    built = swtpm.named("images-controller").plain
    tag = built["imageName"]
    assert built["build"]["context"] == "controller"
    assert built["build"]["dockerfile"] == "images/controller/Dockerfile"
    assert built["skipPush"] is True
    infra_load = swtpm.named("infra-images")
    assert tag in infra_load.plain["triggers"] and tag in infra_load.plain["environment"]["IMAGES"].split()
    assert swtpm.named("images-controller").urn in infra_load.dependencies
    for load in swtpm.resources:
        if load.name.startswith("agents-") and load.name.endswith("-images"):
            assert tag not in load.plain["environment"]["IMAGES"].split()


def test_the_controller_tag_follows_its_sources_and_nothing_else(tmp_path, monkeypatch):
    (tmp_path / "controller" / "__pycache__").mkdir(parents=True)
    (tmp_path / "controller" / "reconcile.py").write_text("first\n")
    (tmp_path / "controller" / "requirements.txt").write_text("kubernetes==32.0.1\n")
    monkeypatch.setattr(images_module, "ROOT", tmp_path)
    first = tree_digest("controller")
    (tmp_path / "controller" / "__pycache__" / "reconcile.cpython-311.pyc").write_bytes(b"\0bytecode")
    assert tree_digest("controller") == first
    (tmp_path / "controller" / "reconcile.py").write_text("second\n")
    assert tree_digest("controller") != first
    (tmp_path / "controller" / "reconcile.py").write_text("first\n")
    (tmp_path / "controller" / "requirements.txt").write_text("kubernetes==33.1.0\n")
    assert tree_digest("controller") != first


def test_the_controller_image_runs_as_the_configured_user_from_a_pinned_python():
    (spec,) = build_specs(KeylimeImagesArgs(keylime_version="7.14.3", agent_version="0.2.9", uid=1234, gid=4321))["controller"]
    args = dict(spec.args)
    assert (args["KEYLIME_UID"], args["KEYLIME_GID"]) == ("1234", "4321")
    assert args["BASE_IMAGE"].startswith("docker.io/library/python:3.11.")
    assert spec.source_revision == tree_digest("controller")
