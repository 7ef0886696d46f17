import FuzzDriver
import Foundation
import Model
import Wire

/// A fixed key for the verification paths (nothing the fuzzer makes can be signed by it).
let fuzzKey = SigningKey().publicKey

/// libFuzzer entry: every JSON message the core and the agents exchange, decoded with
/// StableJSON exactly as they do; hostile bytes are a decoding error, never a trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let data = Data(bytes: start, count: count)
    _ = try? StableJSON.decode(EnrolRequest.self, from: data)
    _ = try? StableJSON.decode(EnrolReply.self, from: data)
    if let checkIn = try? StableJSON.decode(CheckIn.self, from: data) { _ = checkIn.inventory?.digest }
    _ = try? StableJSON.decode(CheckInReply.self, from: data)
    if let job = try? StableJSON.decode(Job.self, from: data) {
        // What an agent does with a job before it trusts anything in it.
        _ = job.claim
        _ = try? job.ticket.open(JobTicket.self, as: .job, trusting: [fuzzKey])
    }
    if let reply = try? StableJSON.decode(CheckInReply.self, from: data), let chain = reply.keyRotations {
        _ = KeyRotation.follow(chain, from: fuzzKey)
    }
    _ = try? StableJSON.decode(AgentEvent.self, from: data)
    _ = try? StableJSON.decode(SignedEnvelope.self, from: data)
    return 0
}

@_cdecl("fuzz_wire_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { fuzzWire($0, $1) }
}
