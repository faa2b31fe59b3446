"""``anomaly-ov serve``: a web page for inspection (upload a part's image or views, see the anomaly map,
read the model's answer, ask follow-up questions).

* :mod:`~anomaly_ov.app.uploads` -- the limits on what a user may upload and the checked reading of it;
* :mod:`~anomaly_ov.app.inspection` -- one inspection: the detection answer, the overlay with a colour bar,
  the downloadable PNG and JSON, follow-up questions through :class:`anomaly_ov.inference.chat.Chat`
  (the same code path as ``anomaly-ov chat``);
* :mod:`~anomaly_ov.app.examples` -- the gallery of example images (synthetic held-out classes, ELPV);
* :mod:`~anomaly_ov.app.page` -- the Gradio Blocks page;
* :mod:`~anomaly_ov.app.serve` -- the command: config, model loaded once, the server's safety defaults.

Only ``page`` and ``serve`` import Gradio, and only when a page is built.
"""
