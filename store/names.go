package store

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest accepted snapshot name, in bytes. It keeps every
// record file name under the 255-byte limit of Linux file systems even when
// every byte of the name has to be escaped.
const MaxNameLen = 64

// ValidateName reports whether name can be used as a snapshot name. It
// returns an error wrapping ErrInvalidName, and it is called by every store
// operation before anything is read or written.
//
// A name is accepted when it is 1 to MaxNameLen bytes of valid UTF-8 made
// only of printable characters (unicode.IsPrint: letters, marks, numbers,
// punctuation, symbols and the ASCII space; so no NUL, no control
// character, no other kind of space, no invisible format character), and it
// contains no '/', does not start with '.' (which also refuses "." and
// ".."), and neither starts nor ends with a space. "a..b", "%", a backslash and
// names in any script are accepted.
func ValidateName(name string) error {
	reason := nameProblem(name)
	if reason == "" {
		return nil
	}
	return fmt.Errorf("store: snapshot name %q: %s: %w", name, reason, ErrInvalidName)
}

func nameProblem(name string) string {
	// Printable ASCII, the usual case, needs no decoding.
	ascii := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c >= 0x7f {
			ascii = false
			break
		}
	}
	switch {
	case name == "":
		return "empty"
	case len(name) > MaxNameLen:
		return fmt.Sprintf("longer than %d bytes", MaxNameLen)
	case !ascii && !utf8.ValidString(name):
		return "not valid UTF-8"
	case name[0] == '.':
		return "starts with '.'"
	case name[0] == ' ' || name[len(name)-1] == ' ':
		return "starts or ends with a space"
	case strings.IndexByte(name, '/') >= 0:
		return "contains '/'"
	case ascii:
		return ""
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Sprintf("contains the non-printable character %U", r)
		}
	}
	return ""
}

// ValidateDomain reports whether uuid is a domain UUID in canonical form:
// 8-4-4-4-12 lowercase hexadecimal digits, as xl and QEMU print it.
// Uppercase is refused rather than folded so that each domain has exactly
// one directory. The error wraps ErrInvalidDomain.
func ValidateDomain(uuid string) error {
	if len(uuid) != 36 {
		return fmt.Errorf("store: domain %q: want 36 characters in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx: %w", uuid, ErrInvalidDomain)
	}
	for i := 0; i < len(uuid); i++ {
		c := uuid[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return fmt.Errorf("store: domain %q: want '-' at offset %d: %w", uuid, i, ErrInvalidDomain)
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return fmt.Errorf("store: domain %q: want a lowercase hex digit at offset %d: %w", uuid, i, ErrInvalidDomain)
			}
		}
	}
	return nil
}

const (
	recordPrefix = "snapshotdata-"
	recordSuffix = ".xl"
	hexDigits    = "0123456789ABCDEF"
)

// RecordFileName returns the file name, within its domain's directory, of
// the record of the snapshot called name (which must pass ValidateName):
// "snapshotdata-" + the escaped name + ".xl". Bytes of the name that are
// ASCII letters, digits, '.', '_' or '-', and all bytes of non-ASCII UTF-8
// characters, are kept; every other byte (space, '%', punctuation) becomes
// '%' and two uppercase hex digits. Because '%' itself is always escaped the
// mapping is injective: two different names never share a file.
func RecordFileName(name string) string {
	n := len(recordPrefix) + len(recordSuffix)
	for i := 0; i < len(name); i++ {
		if keepInFileName(name[i]) {
			n++
		} else {
			n += 3
		}
	}
	b := make([]byte, 0, n)
	b = append(b, recordPrefix...)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if keepInFileName(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
		}
	}
	b = append(b, recordSuffix...)
	return string(b)
}

func keepInFileName(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c >= utf8.RuneSelf
}

// RecordName is the inverse of RecordFileName: it returns the snapshot
// name whose record file is called fileName, and false when fileName is
// not the file name of any valid snapshot name (wrong prefix or suffix, a
// malformed or non-canonical escape, or a name ValidateName refuses).
func RecordName(fileName string) (string, bool) {
	if !isRecordFileName(fileName) {
		return "", false
	}
	esc := fileName[len(recordPrefix) : len(fileName)-len(recordSuffix)]
	b := make([]byte, 0, len(esc))
	for i := 0; i < len(esc); i++ {
		c := esc[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(esc) {
			return "", false
		}
		hi, lo := strings.IndexByte(hexDigits, esc[i+1]), strings.IndexByte(hexDigits, esc[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b = append(b, byte(hi<<4|lo))
		i += 2
	}
	name := string(b)
	if ValidateName(name) != nil || !fileNameMatches(name, fileName) {
		return "", false
	}
	return name, true
}

// isRecordFileName reports whether a directory entry looks like a record
// file (its content and exact name are checked when it is read).
func isRecordFileName(fn string) bool {
	return len(fn) > len(recordPrefix)+len(recordSuffix) &&
		strings.HasPrefix(fn, recordPrefix) && strings.HasSuffix(fn, recordSuffix)
}

// fileNameMatches reports whether fn == RecordFileName(name), without
// building the file name.
func fileNameMatches(name, fn string) bool {
	if len(fn) < len(recordPrefix)+len(recordSuffix) || fn[:len(recordPrefix)] != recordPrefix ||
		fn[len(fn)-len(recordSuffix):] != recordSuffix {
		return false
	}
	fn = fn[len(recordPrefix) : len(fn)-len(recordSuffix)]
	j := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		if keepInFileName(c) {
			if j >= len(fn) || fn[j] != c {
				return false
			}
			j++
			continue
		}
		if j+3 > len(fn) || fn[j] != '%' || fn[j+1] != hexDigits[c>>4] || fn[j+2] != hexDigits[c&15] {
			return false
		}
		j += 3
	}
	return j == len(fn)
}
