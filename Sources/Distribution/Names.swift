import Model

/// Crypto also has a `SHA256Digest`; in this module the name means changelab's.
public typealias SHA256Digest = Model.SHA256Digest
