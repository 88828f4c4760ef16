package migrate

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// stream builds a migration stream: header, a body, and the given tail.
func stream(body, tail []byte) []byte {
	b := append([]byte("QEVM\x00\x00\x00\x03"), body...)
	return append(b, tail...)
}

func vmdesc(json string) []byte {
	b := []byte{streamFooter, 0, 0, 0, 0x28, streamEOF, streamVMDesc, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[7:], uint32(len(json)))
	return append(b, json...)
}

func TestStreamComplete(t *testing.T) {
	desc := `{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0}]}`
	whole := stream([]byte("\x01ram{}and more"), vmdesc(desc))
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"with description", whole, true},
		{"without description", stream([]byte("\x01ram"), []byte{streamFooter, 0, 0, 0, 9, streamEOF}), true},
		{"cut in the description", whole[:len(whole)-5], false},
		{"cut before the description", whole[:len(whole)-len(desc)-6], false},
		{"description length wrong", wrongLength(whole, len(desc)), false},
		{"no header", append([]byte("QFI\xfb\x00\x00\x00\x03"), vmdesc(desc)...), false},
		{"empty", nil, false},
		{"a brace at the end only", stream([]byte("xyz"), []byte("{}")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "mem")
			if err := os.WriteFile(p, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			err := StreamComplete(p)
			if tc.ok && err != nil {
				t.Errorf("complete stream refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrIncompleteStream) {
				t.Errorf("got %v, want ErrIncompleteStream", err)
			}
		})
	}
}

// wrongLength returns a copy of a whole stream whose description length
// is off by one.
func wrongLength(whole []byte, descLen int) []byte {
	b := append([]byte(nil), whole...)
	at := len(b) - descLen - 4
	binary.BigEndian.PutUint32(b[at:], uint32(descLen+1))
	return b
}
