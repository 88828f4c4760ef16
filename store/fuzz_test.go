package store

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// FuzzParse feeds arbitrary bytes to the parser: it must not panic, and
// whatever it accepts must be written and read back unchanged, and written
// the same way twice.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"name = \"n\"\n",
		"snapshot_name=\"1397207577\"\nsnapshot_creationtime=\"1397207577\"\nname = 1397207577\n",
		"name = 'a' ; labels = [ \"a=b\", ]\nx = [ [ 1 ], \"\\x00\" ]\n",
		"name = \"n\"\ndisks = 2\ndisk_1_removed = 1\ndisk_0_date = \"2026-01-02T03:04:05Z\"\n",
		"name = \"n\"\ncreation_time = \"2026-11-26T07:00:00.123456789Z\"\ncreation_time_epoch = 1795676400\n",
		"name = \"n\"\nconfig = \"\\xff\\n\\\"\"\n# comment\n",
	}
	if data, err := Marshal(sampleRecord()); err == nil {
		seeds = append(seeds, string(data))
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Unmarshal(data)
		if err != nil {
			if _, ok := err.(*CorruptError); !ok {
				t.Fatalf("Unmarshal error %T is not *CorruptError: %v", err, err)
			}
			return
		}
		out, err := Marshal(r)
		if err != nil {
			t.Fatalf("Marshal of a parsed record: %v\ninput: %q", err, data)
		}
		again, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("Unmarshal(Marshal(r)): %v\ninput: %q\nwritten: %q", err, data, out)
		}
		if diff := diffRecords(r, again); diff != "" {
			t.Fatalf("round trip changed the record (-parsed +reparsed):\n%s\ninput: %q", diff, data)
		}
		out2, err := Marshal(again)
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("Marshal is not stable: %v\n%q\n%q", err, out, out2)
		}
	})
}

// FuzzRoundTrip builds records from arbitrary field values: every record
// that Validate accepts must be written and read back equal.
func FuzzRoundTrip(f *testing.F) {
	f.Add("n", "desc", []byte("cfg"), "", "ok", "k", "v", "virtio0", uint64(1), int64(5), int64(1795676400123456789), "future", `"x"`, false, 1)
	f.Add("日本語 %2F", "\x00\xff\"\\\n", []byte{0, 1, 2, 0xff}, "p", "\x7f", "k\n", "=", "'", uint64(1<<63), int64(-1), int64(-62135596800000000), "disk_0_x", "[ 1, [ ] ]", true, 3)
	f.Fuzz(func(t *testing.T, name, desc string, config []byte, parent, status, lk, lv, device string,
		vmstate uint64, clock, nanos int64, ek, ev string, removed bool, version int) {
		if ValidateName(name) != nil {
			name = "n"
		}
		if ValidateName(parent) != nil || parent == name {
			parent = ""
		}
		if clock < 0 {
			clock = -(clock + 1)
		}
		if version < 1 {
			version = 1
		}
		r := &Record{
			FormatVersion: version,
			Name:          name,
			Description:   desc,
			CreationTime:  time.Unix(0, nanos),
			State:         desc,
			Parent:        parent,
			Status:        Status(status),
			Memory:        Memory{Kind: device, Node: lv, File: desc},
			Disks: []Disk{{Device: device, Node: lk, File: desc, Kind: status, ID: lv, Tag: name, Overlay: ek,
				VMStateSize: vmstate, Date: time.Unix(0, nanos/3).UTC(), VMClock: time.Duration(clock), Removed: removed}, {}},
			Downtime: time.Duration(clock / 7),
			Config:   config,
		}
		if lk != "" && !strings.Contains(lk, "=") {
			r.Labels = map[string]string{lk: lv, "fixed": lk}
		}
		if isIdent(ek) && !isKnownKey(ek) && checkRawValue(ev) == nil {
			r.Extra = map[string]string{ek: ev}
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Validate refused a record built to be valid: %v", err)
		}
		if !fileNameMatches(name, RecordFileName(name)) || parent != "" && fileNameMatches(parent, RecordFileName(name)) {
			t.Fatalf("fileNameMatches disagrees with RecordFileName for %q / %q", name, parent)
		}
		data, err := Marshal(r)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		got, err := Unmarshal(data)
		if err != nil {
			t.Fatalf("Unmarshal: %v\n%s", err, data)
		}
		if diff := diffRecords(r, got, recordCmp); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s\nfile:\n%s", diff, data)
		}
		if _, ok := unmarshalCanonical(data, nil); !ok {
			t.Fatalf("the fast path does not read what Marshal wrote:\n%s", data)
		}
	})
}

func sampleRecord() *Record {
	t0 := time.Date(2026, 11, 26, 7, 0, 0, 123456789, time.UTC)
	return &Record{
		Name: "before-upgrade", Description: "d", CreationTime: t0, State: "running", Parent: "base", Status: StatusOK,
		Memory:   Memory{Kind: "external", File: "/m.save"},
		Disks:    []Disk{{Device: "virtio0", Node: "n0", File: "/a.qcow2", Kind: "internal", ID: "1", Tag: "t", VMStateSize: 9, Date: t0, VMClock: time.Hour}},
		Downtime: time.Millisecond, Labels: map[string]string{"a": "b"}, Config: []byte("x\ny"),
		Extra: map[string]string{"future": "[ 1 ]"},
	}
}

// diffRecords is cmp.Diff with the config compared by bytes.Equal: cmp
// walks a byte slice element by element, far too slowly for the large
// inputs the fuzzer builds.
func diffRecords(want, got *Record, opts ...cmp.Option) string {
	w, g := *want, *got
	if !bytes.Equal(w.Config, g.Config) {
		return fmt.Sprintf("config differs:\n%q\n%q", w.Config, g.Config)
	}
	w.Config, g.Config = nil, nil
	return cmp.Diff(&w, &g, opts...)
}
