"""Measurements taken on the user's own devices, brought home into the run's report (issue 23).

A device measures with the bundle's ``bench.py`` (over ssh: :mod:`.measure`; from a file: ``pipeline device add``;
from a phone's browser: the demo server). Each result is checked (:mod:`.result`), then recorded as one JSON file
per device (:mod:`.record`, the only writer), and the report shows them (:mod:`.report`).
"""
