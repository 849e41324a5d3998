"""Image tags and pushes: local for the program's own clusters, pushed to imageRegistry for the user's."""

from __future__ import annotations

from components.images import COMPONENTS, CONTROLLER, KeylimeImagesArgs, LocalClones, build_specs


def args(**overrides) -> KeylimeImagesArgs:
    return KeylimeImagesArgs(**{"keylime_version": "7.14.3", "agent_version": "0.2.9", "uid": 490, "gid": 490, **overrides})


def test_without_a_registry_every_image_stays_local_under_the_project_prefix():
    for chain in build_specs(args()).values():
        assert all(spec.registry is None and spec.tag.startswith("keylime-push/") for spec in chain)


def test_with_a_registry_the_images_the_clusters_run_are_named_after_it_and_source_builds_are_not(tmp_path):
    (tmp_path / "rust" / "docker" / "release").mkdir(parents=True)
    (tmp_path / "rust" / "docker" / "release" / "Dockerfile.fedora").write_text("FROM scratch\n")
    (tmp_path / "keylime").mkdir()
    clones = LocalClones(str(tmp_path / "keylime"), str(tmp_path / "rust"))
    specs = build_specs(args(registry="registry.example.com/kp", clones=clones))
    for component in (*COMPONENTS, CONTROLLER):
        *sources, run = specs[component]
        assert run.tag.startswith(f"registry.example.com/kp/{component}:")
        assert all(source.registry is None and source.tag.startswith("keylime-push/") for source in sources)


def test_a_registry_does_not_change_what_the_tag_hashes():
    local, pushed = build_specs(args())["verifier"][-1], build_specs(args(registry="r.example.com/x"))["verifier"][-1]
    assert local.tag.split(":", 1)[1] == pushed.tag.split(":", 1)[1]
