package launch

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrSyntax is wrapped by the errors of SplitCommandLine and ReadArgvFile.
var ErrSyntax = errors.New("launch: command line syntax")

// SplitCommandLine splits a command line into argv words the way a POSIX
// shell splits words, without running a shell and without any expansion:
// words are separated by unquoted blanks (space, tab, newline); inside
// single quotes every character is literal; inside double quotes a
// backslash escapes only `"`, `\`, `$`, a backquote and a newline; outside
// quotes a backslash makes the next character literal (a backslash-newline
// pair is removed). `$`, `*`, `~`, `;`, `|` and the like are ordinary
// characters. Quotes may join parts of one word (`a'b'"c"` is abc), and a
// pair of quotes alone is an empty word. An unterminated quote or a trailing backslash is an
// error wrapping ErrSyntax.
func SplitCommandLine(s string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool
	)
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t', '\n', '\r':
			flush()
		case '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("%w: trailing backslash", ErrSyntax)
			}
			i++
			if s[i] == '\n' {
				continue
			}
			cur.WriteByte(s[i])
			inWord = true
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("%w: unterminated single quote at byte %d", ErrSyntax, i)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case '"':
			start := i
			inWord = true
			for i++; ; i++ {
				if i >= len(s) {
					return nil, fmt.Errorf("%w: unterminated double quote at byte %d", ErrSyntax, start)
				}
				if s[i] == '"' {
					break
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				cur.WriteByte(s[i])
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return words, nil
}

// ReadArgvFile reads a command line from a file that holds one argv word
// per line, argv[0] (the QEMU binary) first. Words are taken verbatim
// (spaces and quotes included); only a trailing "\r" is dropped. Empty
// lines and lines whose first character is '#' are skipped, so a word
// cannot be empty or start with '#'.
func ReadArgvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("launch: read command line: %w", err)
	}
	defer f.Close()
	var argv []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" || line[0] == '#' {
			continue
		}
		argv = append(argv, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("launch: read command line %s: %w", path, err)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("%w: %s holds no command line", ErrSyntax, path)
	}
	return argv, nil
}

// EscapeOptionValue escapes a value for QEMU's comma-separated option
// syntax: every ',' becomes ",,".
func EscapeOptionValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// optionPieces splits a QEMU option string at the commas that separate
// options (a ",," pair is an escaped comma and stays inside its piece). The
// pieces keep their escaping, so strings.Join(pieces, ",") is the input.
func optionPieces(s string) []string {
	var pieces []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			continue
		}
		if i+1 < len(s) && s[i+1] == ',' {
			i++ // escaped comma
			continue
		}
		pieces = append(pieces, s[start:i])
		start = i + 1
	}
	return append(pieces, s[start:])
}

// unescapeOptionValue undoes EscapeOptionValue.
func unescapeOptionValue(v string) string { return strings.ReplaceAll(v, ",,", ",") }

// replacePath returns argv with every occurrence of a path in replace
// (old path -> new path) substituted: a word equal to the old path, or an
// option value (the part after '=' of a comma-separated piece, unescaped)
// equal to it. Words without a match are kept byte for byte. It returns
// how many times each old path was replaced. Substitution is simultaneous:
// a new path that equals another old path is not replaced again.
func replacePath(argv []string, replace map[string]string) ([]string, map[string]int) {
	out := make([]string, len(argv))
	count := map[string]int{}
	for i, w := range argv {
		if nw, ok := replace[w]; ok {
			out[i] = nw
			count[w]++
			continue
		}
		pieces := optionPieces(w)
		changed := false
		for j, p := range pieces {
			key, val, ok := strings.Cut(p, "=")
			if !ok {
				continue
			}
			if nv, ok := replace[unescapeOptionValue(val)]; ok {
				pieces[j] = key + "=" + EscapeOptionValue(nv)
				count[unescapeOptionValue(val)]++
				changed = true
			}
		}
		if changed {
			out[i] = strings.Join(pieces, ",")
		} else {
			out[i] = w
		}
	}
	return out, count
}

// mentionsPath reports whether some word of argv is path, or holds it as
// an option value, or holds it after a "unix:" prefix (as -qmp and
// -chardev do).
func mentionsPath(argv []string, path string) bool {
	for _, w := range argv {
		if w == path {
			return true
		}
		for _, p := range optionPieces(w) {
			v := p
			if _, after, ok := strings.Cut(p, "="); ok && !strings.HasPrefix(p, "unix:") {
				v = after
			}
			v = strings.TrimPrefix(v, "unix:")
			if unescapeOptionValue(v) == path {
				return true
			}
		}
	}
	return false
}
