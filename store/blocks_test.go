package store

import (
	"bytes"
	"testing"
)

// TestRecordBlocks: pieces are zeroed, never shared, and capped, so that
// an append to one never writes over the next.
func TestRecordBlocks(t *testing.T) {
	var b recordBlocks
	var (
		recs  []*Record
		disks [][]Disk
		bufs  [][]byte
	)
	for i := 0; i < 500; i++ {
		r := b.record()
		if r.Name != "" {
			t.Fatalf("record %d is not zero", i)
		}
		r.Name = string(rune('a' + i%26))
		recs = append(recs, r)
		d := b.diskSlice(1 + i%3)
		if len(d) != cap(d) || d[0].Device != "" {
			t.Fatalf("disks %d: len %d cap %d, device %q", i, len(d), cap(d), d[0].Device)
		}
		for j := range d {
			d[j].Device = r.Name
		}
		disks = append(disks, d)
		p := b.byteSlice(1 + i%100)
		if len(p) != 0 {
			t.Fatalf("bytes %d: len %d", i, len(p))
		}
		p = append(p, bytes.Repeat([]byte(r.Name), cap(p))...)
		bufs = append(bufs, p)
	}
	for i := range recs {
		_ = append(disks[i], Disk{Device: "appended"})
		_ = append(bufs[i], '!')
	}
	for i, r := range recs {
		if r.Name != string(rune('a'+i%26)) {
			t.Fatalf("record %d was overwritten: %q", i, r.Name)
		}
		for _, d := range disks[i] {
			if d.Device != r.Name {
				t.Fatalf("disks of record %d were overwritten: %q", i, d.Device)
			}
		}
		if !bytes.Equal(bufs[i], bytes.Repeat([]byte(r.Name), len(bufs[i]))) {
			t.Fatalf("bytes of record %d were overwritten: %q", i, bufs[i])
		}
	}
}
