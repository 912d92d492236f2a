"""Platform tooling for this repository's k8s/ and platform/ files: not part of the model package.

    deploy      the RayService's serveConfigV2, generated from serve/config.yaml
    crd         offline validation of KubeRay manifests against the CRDs' schemas
    dashboards  Grafana dashboards and their provisioning

They read the checkout (k8s/, platform/, serve/) on purpose, so they live beside it, are run as
``python -m larimar_ops.<tool>`` from the repo root, and are left out of the wheel.
"""
