package hmp

import "fmt"

// MaxNameLen is the longest snapshot name ValidateName accepts, in bytes.
// QEMU keeps a snapshot's tag in a 256-byte buffer including the
// terminating NUL and silently truncates longer names (verified on 7.2:
// savevm with a 300-byte name creates a 255-byte tag).
const MaxNameLen = 255

// ValidateName returns an error wrapping ErrUnsafeName unless name reaches
// HMP as exactly one argument, unchanged. It accepts 1 to MaxNameLen bytes
// of printable ASCII (0x21 to 0x7E) other than the quotes ' and " and the
// backslash, not starting with '-'.
//
// Refused, and why:
//   - whitespace and control characters end an HMP argument or the command
//     line ("a b" is an extra argument, "a\nquit" a second line);
//   - a leading quote makes HMP parse an escaped, quoted string, and quotes
//     and backslashes are not taken literally everywhere names travel;
//   - a leading '-' reads as an option to HMP commands and to qemu-img;
//   - bytes above 0x7E: whether HMP splits on them depends on the C
//     locale QEMU runs in (0xA0 is a space in Latin-1);
//   - names longer than MaxNameLen are truncated by QEMU.
//
// Everything else, such as ';', '#', '$', ',' or all digits, reaches QEMU
// literally (tests create and load such snapshots). QEMU 7.2 matches
// savevm, loadvm and delvm names against snapshot tags only, never IDs.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrUnsafeName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrUnsafeName, len(name), MaxNameLen)
	case name[0] == '-':
		return fmt.Errorf("%w: %q starts with '-'", ErrUnsafeName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c <= ' ' || c >= 0x7F:
			return fmt.Errorf("%w: %q has byte %#02x at %d (only printable ASCII without space)", ErrUnsafeName, name, c, i)
		case c == '"' || c == '\'' || c == '\\':
			return fmt.Errorf("%w: %q has %q at %d", ErrUnsafeName, name, c, i)
		}
	}
	return nil
}
