/// An error a person has to act on: what failed, why, and how to fix it.
///
/// Every user-facing failure in changelab ends up as one of these (or as a module's own
/// error enum with the same three parts), so the CLI can print it the same way and exit
/// non-zero. Keep `fix` a concrete command or edit whenever there is one.
public struct ChangelabError: Error, CustomStringConvertible, Sendable, Equatable {
    public var what: String
    public var why: String?
    public var fix: String?

    public init(_ what: String, why: String? = nil, fix: String? = nil) {
        self.what = what
        self.why = why
        self.fix = fix
    }

    public var description: String {
        var text = what
        if let why, !why.isEmpty { text += ": \(why)" }
        if let fix, !fix.isEmpty { text += "\n  fix: \(fix)" }
        return text
    }
}
