"""The wire contracts: every payload the device and the sync server speak, one module each.

- `topics`: the topic tree (`explorer/<device id>/<kind>`), the one place topics are spelled;
- `detection`: the payload a device publishes for each closed detection;
- `feedback`: a guide's verdict on a detection;
- `status`: a device's retained state (and its last will);
- `tour`: a tour started or ended;
- `receipt`: what the server committed, published back to the device (only then is a
  message delivered).

`checks` holds the field checks and the guarded JSON decoder they share, and the device id
rule that `config.toml`'s `[device] id` is held to.

The rules:

- Each payload module is frozen by a contract test under tests/device/contracts/
  (test_<module>_contract.py, headed "CONTRACT TEST"); read that header before changing a
  field, a type or an encoding: devices in the field run old releases for months.
- A payload is built from a domain object (`device.domain`) by an explicit field list and
  parsed back by a function that trusts nothing, since anyone on the broker can publish.
- This package imports only `device.domain` and the standard library, so the store, the sync
  runtime, the server and the config can all depend on it without depending on each other
  (tested: tests/device/test_imports.py).
"""
