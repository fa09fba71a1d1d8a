"""The station's OCPP 2.0.1 gateway: chargers with Eichrecht meters connect over websockets,
their meter-signed OCMF readings become the station's records (`gateway`, `decide`, `state`)."""
