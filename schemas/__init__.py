"""Message types, their Avro schemas, the schema registry client and the wire codec.

``messages`` holds the Python types (the source of truth), ``avro`` derives one Avro schema per type
(committed as ``avro/*.avsc``), ``registry`` talks to a Confluent-compatible registry and ``codec`` turns
messages into Confluent wire-format bytes and back.
"""
