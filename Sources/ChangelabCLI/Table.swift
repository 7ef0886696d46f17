import Foundation

/// A plain-text table: a header row, aligned columns, two spaces between them.
struct Table {
    var headers: [String]
    var rows: [[String]] = []

    init(_ headers: String...) {
        self.headers = headers
    }

    mutating func add(_ cells: String...) {
        rows.append(cells)
    }

    mutating func add(_ cells: [String]) {
        rows.append(cells)
    }

    var text: String {
        let all = [headers] + rows
        var widths = [Int](repeating: 0, count: headers.count)
        for row in all {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        return all.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    /// Through Swift's own stdout buffer, like every other line a command prints: a direct
    /// write came out ahead of lines printed before it when stdout was a pipe.
    func print() {
        Swift.print(text, terminator: "")
    }
}

/// "3 s", "4 min", "2 h", "5 d": how old something is, for tables.
func age(since date: Date, now: Date = Date()) -> String {
    let seconds = Int(now.timeIntervalSince(date))
    switch seconds {
    case ..<60: return "\(max(0, seconds)) s"
    case ..<3600: return "\(seconds / 60) min"
    case ..<86400: return "\(seconds / 3600) h"
    default: return "\(seconds / 86400) d"
    }
}
