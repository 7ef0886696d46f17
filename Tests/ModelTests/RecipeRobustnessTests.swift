import Model
import Testing

/// Recipe YAML a fuzzer (or a careless edit) produces is a reported problem, never a trap.
@Suite struct RecipeRobustnessTests {
    @Test(arguments: [
        String(repeating: "[", count: 60_000),
        String(repeating: "{a: ", count: 20_000),
        (0..<3000).map { String(repeating: " ", count: $0) + "- " }.joined(separator: "\n"),
        "name: web\nmemory_mib: 99999999999999999999999\nvcpus: -1\n",
    ])
    func hostileYAMLIsRefusedWithAProblem(text: String) {
        #expect(throws: (any Error).self) { _ = try BaselineRecipe.parse(text, file: "fuzz.yaml") }
        #expect(throws: (any Error).self) { _ = try PackageRecipe.parse(text, file: "fuzz.yaml") }
    }

    @Test func aTimeoutBeyondAWeekIsAProblemWithItsPosition() {
        let text = "name: p\nversion: 1.0\ninstall:\n  - name: i\n    run: x\n    timeout: 99999999999999\n"
        #expect {
            _ = try PackageRecipe.parse(text, file: "p.yaml")
        } throws: { error in
            "\(error)".contains("p.yaml:6:14: 'timeout' must be a positive number of seconds, at most 604800")
        }
    }
}
