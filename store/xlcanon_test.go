package store

import (
	"bytes"
	"testing"
	"time"
)

// canonSeeds are records in the canonical layout, and small edits of them
// that leave it.
func canonSeeds(t testing.TB) [][]byte {
	t.Helper()
	full := sampleRecord()
	full.Description = "line one\n\t\"two\" \\ \x01 \xff é"
	full.Parent = "base"
	full.Disks = append(full.Disks, Disk{}, Disk{Device: "virtio2", Kind: "external", Overlay: "/o.qcow2", Removed: true})
	full.Labels["vmsnap.excluded"] = `["x"]`
	full.Extra["zz_list"] = "[\n 1, # comment\n 'a', [ ],\n]"
	full.Extra["num"] = "0x1f"
	old := &Record{Name: "old", CreationTime: time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)}
	var seeds [][]byte
	for _, r := range []*Record{sampleRecord(), full, old, {Name: "n"}} {
		data, err := Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	return seeds
}

// canonEdits are edits of Marshal(sampleRecord()) and whether the fast
// path still reads the result.
var canonEdits = []struct {
	old, new string
	fast     bool
}{
	{"format_version = 1", "format_version = 01", true},
	{"disks = 1", "disks = 2", true},
	{"name = ", "name  = ", false},
	{"\nformat_version", "\n# comment\nformat_version", false},
	{"format_version = 1", "format_version = 0x1", false},
	{"disks = 1", "disks = 0", false},
	{`labels = [ "a=b" ]`, `labels = [ "a=b", "a=c" ]`, false},
	{`labels = [ "a=b" ]`, `labels = [ "b=1", "a=2" ]`, false},
	{`labels = [ "a=b" ]`, `labels = [ ]`, false},
	{`labels = [ "a=b" ]`, `labels = [ 'a=b' ]`, false},
	{"downtime_ns = 1000000", "downtime_ns = 18446744073709551616", false},
	{"downtime_ns = 1000000", "downtime_ns = 9223372036854775807", true},
	{"downtime_ns = 1000000", "downtime_ns = 9223372036854775808", false},
	{"downtime_ns = 1000000", "downtime_ns = 0000000000000000001", true},
	{"downtime_ns = 1000000", "downtime_ns = 00000000000000000001", false},
	{"creation_time_epoch = 1795676400", "creation_time_epoch = 1795676401", false},
	{`"before-upgrade"`, `"before-upgrade" # c`, false},
	{"future = [ 1 ]", "future = [ 1 ]\nfuture = 2", false},
	{"future = [ 1 ]", "future = [ 1 ]\nname = \"x\"", false},
	{"future = [ 1 ]", "future = [ 1 ]\nalpha = 2", false},
	{"future = [ 1 ]", "future = [ 1 ];", false},
	{"future = [ 1 ]", "future = [ 1 ]\n\n", false},
	{"disk_0_tag", "disk_00_tag", false},
	{"config = ", "zconfig = ", false},
	{"\n", "\r\n", false},
	{"\nfuture = [ 1 ]\n", "", false},
}

func canonEdited(t testing.TB) [][]byte {
	t.Helper()
	data, err := Marshal(sampleRecord())
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range canonEdits {
		if e.old != "" && !bytes.Contains(data, []byte(e.old)) {
			t.Fatalf("edit %q: not in %s", e.old, data)
		}
		out = append(out, bytes.Replace(data, []byte(e.old), []byte(e.new), 1))
	}
	return out
}

// TestCanonicalFastPath checks which files the fast path reads itself
// (what Marshal writes) and that Unmarshal reads every file exactly like
// the general parser.
func TestCanonicalFastPath(t *testing.T) {
	for i, data := range canonSeeds(t) {
		if _, ok := unmarshalCanonical(data, nil); !ok {
			t.Errorf("seed %d, written by Marshal, is not read by the fast path:\n%s", i, data)
		}
		checkSameAsGeneral(t, data)
	}
	for i, data := range canonEdited(t) {
		if _, ok := unmarshalCanonical(data, nil); ok != canonEdits[i].fast {
			t.Errorf("edit %q -> %q: fast path reads it: %v, want %v", canonEdits[i].old, canonEdits[i].new, ok, canonEdits[i].fast)
		}
		checkSameAsGeneral(t, data)
	}
	for _, data := range []string{"", recordHeader, recordHeader + "format_version = 1\n"} {
		if _, ok := unmarshalCanonical([]byte(data), nil); ok {
			t.Errorf("fast path reads %q", data)
		}
		checkSameAsGeneral(t, []byte(data))
	}
}

// FuzzCanonical: on any input, the fast path either gives up or returns
// the record the general parser returns, and Unmarshal gives what the
// general parser gives (the same record, or the same error).
func FuzzCanonical(f *testing.F) {
	for _, s := range append(canonSeeds(f), canonEdited(f)...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkSameAsGeneral(t, data) })
}

func checkSameAsGeneral(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := unmarshalGeneral(data, string(data))
	if r, ok := unmarshalCanonical(data, new(recordBlocks)); ok {
		if wantErr != nil {
			t.Fatalf("fast path accepted what the general parser refuses (%v):\n%q", wantErr, data)
		}
		if diff := diffRecords(want, r); diff != "" || !sameConfig(want, r) {
			t.Fatalf("fast path and general parser disagree (-general +fast):\n%s\nconfig %q, %q\ninput: %q", diff, want.Config, r.Config, data)
		}
	}
	got, err := Unmarshal(data)
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("Unmarshal error %v, general parser %v\ninput: %q", err, wantErr, data)
	case err != nil:
		if _, ok := err.(*CorruptError); !ok || err.Error() != wantErr.Error() {
			t.Fatalf("Unmarshal error %T %v, general parser %v", err, err, wantErr)
		}
	default:
		if diff := diffRecords(want, got); diff != "" || !sameConfig(want, got) {
			t.Fatalf("Unmarshal and the general parser disagree (-general +Unmarshal):\n%s\nconfig %q, %q\ninput: %q", diff, want.Config, got.Config, data)
		}
	}
}

// sameConfig compares the configs, nil and empty apart.
func sameConfig(a, b *Record) bool {
	return bytes.Equal(a.Config, b.Config) && (a.Config == nil) == (b.Config == nil)
}

// BenchmarkParsers compares the fast path with the general parser on the
// same record (run with -count to interleave them).
func BenchmarkParsers(b *testing.B) {
	data, err := Marshal(sampleRecord())
	if err != nil {
		b.Fatal(err)
	}
	blocks := new(recordBlocks)
	for _, bc := range []struct {
		name  string
		parse func([]byte) bool
	}{
		{"general", func(d []byte) bool { _, err := unmarshalGeneral(d, string(d)); return err == nil }},
		{"canonical", func(d []byte) bool { _, ok := unmarshalCanonical(d, nil); return ok }},
		{"canonical-blocks", func(d []byte) bool { _, ok := unmarshalCanonical(d, blocks); return ok }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if !bc.parse(data) {
					b.Fatal("not parsed")
				}
			}
		})
	}
}
