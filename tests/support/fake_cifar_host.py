"""Loaded as ``sitecustomize`` by tests/test_fresh_clone.py: the CIFAR-10 download points at 127.0.0.1.

``SMOOTHNET_TEST_CIFAR10_URL`` and ``SMOOTHNET_TEST_CIFAR10_MD5`` name a small archive served by the test, so
``dvc repro prepare@cifar10`` runs the real download path (HTTP, checksum, extraction) without the internet.
"""

import dataclasses
import os

if os.environ.get("SMOOTHNET_TEST_CIFAR10_URL"):
    from smoothnet.data import catalog

    spec = catalog.DATASETS["cifar10"]
    archive = dataclasses.replace(
        spec.archive,
        url=os.environ["SMOOTHNET_TEST_CIFAR10_URL"],
        md5=os.environ["SMOOTHNET_TEST_CIFAR10_MD5"],
    )
    catalog.DATASETS["cifar10"] = dataclasses.replace(spec, archive=archive)
