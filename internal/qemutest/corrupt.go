package qemutest

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"testing"
)

// CorruptRefcount zeroes the refcount of the host cluster that holds the
// guest data at offset off of the qcow2 image file (which must hold data
// there and no QEMU may have open), the kind of damage a QEMU killed in
// the middle of an internal snapshot operation can leave: `qemu-img
// check` then reports a corruption ("refcount=0 reference=1") and exits 2.
// It handles 16-bit refcounts (the default) only.
func CorruptRefcount(t testing.TB, file string, off int64) {
	t.Helper()
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Offset *int64
	}
	if err := json.Unmarshal([]byte(Img(t, "map", "--output=json", file)), &m); err != nil {
		t.Fatalf("qemu-img map %s: %v", file, err)
	}
	host := int64(-1)
	for _, e := range m {
		if e.Data && e.Offset != nil && off >= e.Start && off < e.Start+e.Length {
			host = *e.Offset + off - e.Start
		}
	}
	if host < 0 {
		t.Fatalf("%s holds no data at %d", file, off)
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	clusterBits := binary.BigEndian.Uint32(hdr[20:])
	tableOff := int64(binary.BigEndian.Uint64(hdr[48:]))
	if order := binary.BigEndian.Uint32(hdr[96:]); binary.BigEndian.Uint32(hdr[4:]) >= 3 && order != 4 {
		t.Fatalf("%s: refcount order %d, only 4 (16 bits) is handled", file, order)
	}
	cluster := host >> clusterBits
	perBlock := int64(1) << (clusterBits - 1) // 2-byte entries
	entry := make([]byte, 8)
	if _, err := f.ReadAt(entry, tableOff+8*(cluster/perBlock)); err != nil {
		t.Fatal(err)
	}
	block := int64(binary.BigEndian.Uint64(entry)) &^ (1<<9 - 1)
	if block == 0 {
		t.Fatalf("%s: no refcount block for cluster %d", file, cluster)
	}
	if _, err := f.WriteAt([]byte{0, 0}, block+2*(cluster%perBlock)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
