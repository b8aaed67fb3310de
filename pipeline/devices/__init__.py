"""Measurements taken on the user's own devices, brought home into the run's report (issue 23).

A device measures with the bundle's ``bench.py`` (over ssh: :mod:`.measure`; from a file: ``pipeline device add``)
or with the web bundle's own page (a phone's browser: :mod:`.phone`, ``pipeline demo --lan``). Each result is
checked (:mod:`.result`), then recorded as one JSON file per device (:mod:`pipeline.store.devices`, the only
writer), and the report shows them (:mod:`pipeline.report.on_devices`).
"""
