package migrate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Layout of a QEMU migration stream (savevm.c; checked on 7.2): it starts
// with the magic "QEVM" and a big-endian version (3). A save that completed
// ends every device section with a footer (0x7e and the be32 section id),
// then QEMU_VM_EOF (0x00) and, unless the machine suppresses it, the
// QEMU_VM_VMDESCRIPTION (0x06) section: a be32 length and that many bytes
// of JSON describing the devices. A save cut short ends anywhere before.
const (
	streamMagic       = "QEVM"
	streamEOF         = 0x00
	streamVMDesc      = 0x06
	streamFooter      = 0x7e
	streamTailMaxRead = 16 << 20 // the device description is far smaller
)

// ErrIncompleteStream is returned by StreamComplete for a file that does
// not hold a whole migration stream.
var ErrIncompleteStream = errors.New("not a complete migration stream")

// StreamComplete reports, by reading its head and tail, whether the file
// at path holds a migration stream that QEMU finished writing: the magic,
// then at the end QEMU_VM_EOF followed by the device description (or a
// last section footer and QEMU_VM_EOF when the machine writes none). It is
// the evidence reconcile needs to keep the memory file of a save that a
// crash interrupted after QEMU had completed it: QEMU's query-migrate
// remembers only the last migration, which may be an older one.
func StreamComplete(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	head := make([]byte, 8)
	if _, err := io.ReadFull(f, head); err != nil || string(head[:4]) != streamMagic {
		return fmt.Errorf("%w: %s: no QEVM header", ErrIncompleteStream, path)
	}
	n := min(fi.Size(), streamTailMaxRead)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, fi.Size()-n); err != nil {
		return err
	}
	if tailComplete(tail) {
		return nil
	}
	return fmt.Errorf("%w: %s ends before QEMU's end-of-stream marks", ErrIncompleteStream, path)
}

// tailComplete checks the end of a stream as described above.
func tailComplete(t []byte) bool {
	n := len(t)
	if n >= 6 && t[n-1] == streamEOF && t[n-6] == streamFooter {
		return true
	}
	if n < 8 || t[n-1] != '}' {
		return false
	}
	// Find the description: 0x00 0x06 be32(L) and L bytes of JSON up to
	// the end.
	for i := bytes.LastIndexByte(t, '{'); i >= 6; i = bytes.LastIndexByte(t[:i], '{') {
		l := n - i
		if t[i-5] == streamVMDesc && t[i-6] == streamEOF && int(binary.BigEndian.Uint32(t[i-4:i])) == l {
			return json.Valid(t[i:])
		}
	}
	return false
}
