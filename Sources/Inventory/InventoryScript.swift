import Foundation
import Model

/// The one shell script that gathers an inventory, and how its options shape it.
///
/// It runs on a Debian *minbase* system: dash, coreutils, findutils, grep, sed, mawk, dpkg
/// and systemd are there; iproute2, procps and net-tools are not, so ports come from
/// /proc/net and users from /etc/passwd. Every section starts with a `@@changelab NAME`
/// line; a command that fails leaves its section empty and says why on stderr, so one
/// missing tool never loses the whole inventory.
enum InventoryScript {
    static let marker = "@@changelab "

    /// How the script records the watched files.
    enum Files {
        /// Metadata of every file and the hash of every regular file (the full inventory).
        case hashed
        /// Metadata, plus a `listing` section of cheap change indicators (inode, links,
        /// mtime, ctime) from the same `find` pass, and hashes only when `hashes` is true.
        case listed(hashes: Bool)
        /// The listing, and in the same pass and the same command the hashes of the regular
        /// files whose ctime is after `ctime` (seconds since the epoch as `find -printf %C@`
        /// wrote it, digits and one dot): every file changed since a reference listing whose
        /// newest ctime that is. (No write, chmod, chown, link or re-creation leaves a ctime
        /// behind: user space cannot set it.)
        case listedChangedSince(ctime: String)
    }

    /// The folders whose entries decide what `systemctl list-unit-files` says of a unit:
    /// unit files, their drop-ins, and the symlinks that enable, alias or mask them.
    static let unitDirectories = [
        "/etc/systemd/system", "/etc/systemd/system.control", "/run/systemd/system", "/run/systemd/system.control",
        "/run/systemd/transient", "/run/systemd/generator.early", "/run/systemd/generator", "/run/systemd/generator.late",
        "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system",
    ]
    /// One `unit-dirs` line: `type mode inode size mtime ctime link-target` and the path.
    static let unitDirectoriesFormat = "%y\\t%m\\t%i\\t%s\\t%T@\\t%C@\\t%l\\t%p\\n"

    /// The `unit-dirs` section (the unit folders' metadata) and `unit-also` (every `Also=`
    /// line, `file:line`): what tells which units' states may have changed since a reference.
    ///
    /// With `changedSince` (the newest ctime of a reference's `unit-dirs`), the same `find`
    /// also notes the entries changed since, and the script asks `list-unit-files` at once
    /// about the units they name — the entry, the unit whose `.wants`, `.requires`,
    /// `.upholds` or `.d` folder holds it, a symlink's target, and a template's instances —
    /// in `unit-asked` (the names and patterns) and `unit-fresh` (the answer). That is the
    /// answer the caller would ask for in a second command whenever what it asks for
    /// itself is among those (`UnitFileDiff` decides; `Also=` ties and removals it adds).
    static func unitDirectorySections(changedSince: String? = nil) -> String {
        let folders = unitDirectories.map { "\"$R\"" + shellQuote($0) }.joined(separator: " ")
        let since = changedSince.map(plainDecimal)
        let noted = since.map { " \\( -newerct '@\($0)' -fprintf \"$U\" '%f\\t%h\\t%l\\n' \\)" } ?? ""
        var script = """
            sec unit-dirs

            """
        if since != nil {
            script += """
                U=/run/.changelab-units.$$
                { : >"$U"; } 2>/dev/null || U=$(mktemp /tmp/.changelab-units.XXXXXX) || exit 3

                """
        }
        script += """
            set --
            for d in \(folders); do
              [ -d "$d" ] || continue
              # /lib is /usr/lib on a merged-/usr system: each folder is read once.
              for k in "$@"; do [ "$k" -ef "$d" ] && continue 2; done
              set -- "$@" "$d"
            done
            [ $# -eq 0 ] || find "$@" -printf '\(unitDirectoriesFormat)'\(noted) 2>/dev/null
            sec unit-also
            [ $# -eq 0 ] || grep -rsH '^[[:space:]]*Also[[:space:]]*=' "$@"

            """
        if since != nil {
            script += """
                sec unit-asked
                set -f; set --
                while IFS='\t' read -r f h l; do
                  for n in "$f" "${h##*/}" "${l##*/}"; do
                    for x in .wants .requires .upholds .d; do case $n in (*"$x") n=${n%"$x"} ;; esac; done
                    case $n in (?*.service|?*.socket|?*.target|?*.timer|?*.path|?*.mount|?*.automount|?*.swap|?*.slice|?*.scope|?*.device) ;; (*) continue ;; esac
                    set -- "$@" "$n"
                    case $n in (?*@*.*) set -- "$@" "${n%%@*}@*.${n##*.}" ;; esac
                  done
                done <"$U"
                [ $# -eq 0 ] || printf '%s\\n' "$@"
                sec unit-fresh
                [ $# -eq 0 ] || systemctl --root="${R:-/}" list-unit-files --no-legend --no-pager --plain -- "$@" 2>/dev/null
                set +f

                """
        }
        return script
    }

    /// A ctime as `find -printf %C@` writes it (digits and one dot), else "0" (everything
    /// counts as changed since): it comes from a stored file and goes into the script.
    static func plainDecimal(_ given: String) -> String {
        given.allSatisfy { $0.isASCII && ($0.isNumber || $0 == ".") } && !given.isEmpty ? given : "0"
    }

    /// `systemctl list-unit-files` for the named units only: each unit's state is looked up
    /// on its own, so this costs a fraction of the whole list (6 s under TCG).
    static func unitFilesScript(_ options: InventoryOptions, units: [String]) -> String {
        let root = options.normalizedRoot
        return """
            R=\(shellQuote(root == "/" ? "" : root))
            systemctl --root="${R:-/}" list-unit-files --no-legend --no-pager --plain -- \(units.map(shellQuote).joined(separator: " ")) 2>/dev/null
            exit 0

            """
    }

    /// One listing line: `type mode uid gid size inode links mtime ctime` and the path, tab-separated.
    static let listingFormat = "%y\\t%m\\t%U\\t%G\\t%s\\t%i\\t%n\\t%T@\\t%C@\\t%p\\n"
    static let filesFormat = "%y\\t%m\\t%U\\t%G\\t%s\\t%l\\t%p\\n"

    /// - Parameter unitFiles: false leaves `systemctl list-unit-files` out, for a caller that
    ///   takes the unit files' states from a reference and asks only for those that changed
    ///   (the `unit-dirs` and `unit-also` sections say which).
    /// - Parameter unitsChangedSince: with `unitFiles` false, the newest ctime of the
    ///   reference's unit folders: the script also asks about the units changed since
    ///   (`unitDirectorySections(changedSince:)`).
    static func render(
        _ options: InventoryOptions, files: Files = .hashed, unitFiles: Bool = true, unitsChangedSince: String? = nil
    ) -> String {
        let root = options.normalizedRoot
        let watched = options.watchedPaths.map(shellQuote).joined(separator: " ")
        let prune = pruneExpression(options)
        // The watched roots that exist (or are dangling symlinks), as "$@", in order: one
        // `find` walks them all (under TCG every process started costs ~40 ms).
        let roots = """
            set --; for p in \(watched); do if [ -e "$R$p" ] || [ -L "$R$p" ]; then set -- "$@" "$R$p"; fi; done

            """
        let hashes = """
            sec sha256
            \(roots)[ $# -eq 0 ] || find "$@" \(prune)-type f -print0 | xargs -0 -r sha256sum

            """
        // Where find writes the listing while it prints the files section: a name of this
        // shell's pid in /run, which only root can write (no mktemp process), else mktemp's in /tmp.
        let temporary = """
            L=/run/.changelab-listing.$$
            { : >"$L"; } 2>/dev/null || L=$(mktemp /tmp/.changelab-listing.XXXXXX) || exit 3

            """
        let fileSections: String
        switch files {
        case .hashed:
            fileSections = """
                sec files
                \(roots)[ $# -eq 0 ] || find "$@" \(prune)-printf '\(filesFormat)'

                """ + hashes
        case .listed(let withHashes):
            // One pass: -fprintf writes the listing beside the files section as find walks.
            fileSections = """
                sec files
                \(temporary)\(roots)[ $# -eq 0 ] || find "$@" \(prune)-printf '\(filesFormat)' -fprintf "$L" '\(listingFormat)'
                sec listing
                cat "$L"; rm -f "$L"

                """ + (withHashes ? hashes : "") + unitDirectorySections()
        case .listedChangedSince(let given):
            // Anything but a plain decimal (it came from a stored file) hashes every file.
            let ctime = plainDecimal(given)
            fileSections = """
                sec files
                \(temporary): >"$L.hash"
                \(roots)[ $# -eq 0 ] || find "$@" \(prune)-printf '\(filesFormat)' -fprintf "$L" '\(listingFormat)' \\( -type f -newerct '@\(ctime)' -fprint0 "$L.hash" \\)
                sec listing
                cat "$L"
                sec sha256
                xargs -0 -r sha256sum <"$L.hash"
                rm -f "$L" "$L.hash" ${U:+"$U"}

                """
        }
        return """
            R=\(shellQuote(root == "/" ? "" : root))
            if [ ! -d "${R:-/}" ]; then echo "the root folder ${R:-/} does not exist" >&2; exit 3; fi
            sec() { printf '\(marker)%s\\n' "$1"; }
            put() { while IFS= read -r l || [ -n "$l" ]; do printf '%s\\n' "$l"; done <"$1"; }
            sec hostname
            if [ -z "$R" ]; then put /proc/sys/kernel/hostname 2>/dev/null || uname -n; else put "$R/etc/hostname" 2>/dev/null; fi
            sec os-release
            put "$R/etc/os-release" 2>/dev/null || put "$R/usr/lib/os-release"
            sec kernel
            put /proc/sys/kernel/osrelease 2>/dev/null || uname -r; uname -m
            sec cpu
            while IFS= read -r l; do
              case $l in (processor*|"model name"*) ;; (*) continue ;; esac
              k=${l%%:*}; [ "$k" != "$l" ] || continue
              case ${k#processor} in (*[![:space:]]*) case ${k#"model name"} in (*[![:space:]]*) continue ;; esac ;; esac
              printf '%s\\n' "$l"
            done </proc/cpuinfo
            sec memory
            while IFS= read -r l; do case $l in (MemTotal:*) printf '%s\\n' "$l"; break ;; esac; done </proc/meminfo
            sec disks
            df -P -T -k 2>/dev/null
            sec packages
            dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Package}\\t${Architecture}\\t${Version}\\t${Status}\\n'
            sec passwd
            put "$R/etc/passwd"
            sec group
            put "$R/etc/group"
            \(unitFiles ? Self.unitFilesSection : Self.unitDirectorySections(changedSince: unitsChangedSince))sec units
            if [ -z "$R" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
              echo running
              systemctl list-units --all --no-legend --no-pager --plain --type=service,socket,timer,path,target 2>/dev/null
            fi
            sec tcp
            for f in /proc/net/tcp /proc/net/tcp6; do put "$f"; done 2>/dev/null
            sec udp
            for f in /proc/net/udp /proc/net/udp6; do put "$f"; done 2>/dev/null
            \(fileSections)sec end
            exit 0

            """
    }

    static let unitFilesSection = """
        sec unit-files
        if command -v systemctl >/dev/null 2>&1; then systemctl --root="${R:-/}" list-unit-files --no-legend --no-pager --plain 2>/dev/null; fi

        """

    /// `( -path A -o -path B ) -prune -o `: skips noise folders without descending into
    /// them. Only patterns find matches exactly as changelab does (literal paths, or a
    /// literal folder followed by `/**`) are pruned here; the rest are filtered after parsing.
    static func pruneExpression(_ options: InventoryOptions) -> String {
        let root = options.normalizedRoot == "/" ? "" : options.normalizedRoot
        let literal = options.noise.paths.compactMap { glob -> String? in
            if glob.isLiteral { return glob.pattern }
            let prefix = Glob(String(glob.pattern.dropLast(3)))
            return glob.pattern.hasSuffix("/**") && prefix.isLiteral ? prefix.pattern : nil
        }
        guard !literal.isEmpty else { return "" }
        let tests = literal.map { "-path \(shellQuote(root + $0))" }.joined(separator: " -o ")
        return "\\( \(tests) \\) -prune -o "
    }

    static func shellQuote(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
