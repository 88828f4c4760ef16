package store

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var recordCmp = cmp.Options{cmpopts.EquateEmpty()}

func TestUnmarshal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Record
	}{
		{
			name: "seed example with legacy keys kept",
			in: "snapshot_name=\"1397207577\"\nsnapshot_creationtime=\"1397207577\"\n" +
				"name = 1397207577\ncreation_time_epoch = 1397207577\n",
			want: &Record{FormatVersion: 1, Name: "1397207577", CreationTime: time.Unix(1397207577, 0),
				Extra: map[string]string{"snapshot_name": `"1397207577"`, "snapshot_creationtime": `"1397207577"`}},
		},
		{
			name: "single quotes, semicolons, comments, tabs",
			in:   "# header\n\tname = 'a \"b\"' ; description = \"x\\ty\" # trailing\n\n;state='paused'",
			want: &Record{FormatVersion: 1, Name: `a "b"`, Description: "x\ty", State: "paused"},
		},
		{
			name: "all escapes",
			in:   `name = "n"` + "\n" + `description = "\"\'\\\a\b\f\n\r\t\v\x00\xfF\x41"`,
			want: &Record{FormatVersion: 1, Name: "n", Description: "\"'\\\a\b\f\n\r\t\v\x00\xffA"},
		},
		{
			name: "multi-line list with comments and trailing comma, nested unknown list",
			in: "name = \"n\"\nlabels = [\n  \"a=1\", # first\n  'b=x=y',\n]\n" +
				"future = [ [ \"x\", 1 ], [] ,\n 0x1f ]\n",
			want: &Record{FormatVersion: 1, Name: "n", Labels: map[string]string{"a": "1", "b": "x=y"},
				Extra: map[string]string{"future": "[ [ \"x\", 1 ], [] ,\n 0x1f ]"}},
		},
		{
			name: "disks and numbers",
			in: "name = \"n\"\ndisks = 2\ndisk_1_device = \"hdb\"\ndisk_0_vm_state_size = 0x10\n" +
				"disk_0_vm_clock_ns = \"5\"\ndisk_1_removed = 1\ndisk_0_date = \"2026-01-02T03:04:05.5+01:00\"\n" +
				"disk_0_bitmap = \"future field\"\ndisk_01_device = \"not canonical\"\n",
			want: &Record{FormatVersion: 1, Name: "n", Disks: []Disk{
				{VMStateSize: 16, VMClock: 5, Date: time.Date(2026, 1, 2, 2, 4, 5, 5e8, time.UTC)},
				{Device: "hdb", Removed: true},
			}, Extra: map[string]string{"disk_0_bitmap": `"future field"`, "disk_01_device": `"not canonical"`}},
		},
		{
			name: "newer format version",
			in:   "format_version = 7\nname = \"n\"\nstatus = \"merging\"\n",
			want: &Record{FormatVersion: 7, Name: "n", Status: "merging"},
		},
		{
			name: "no final newline, comment at end of file",
			in:   "name = \"n\" # c",
			want: &Record{FormatVersion: 1, Name: "n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Unmarshal([]byte(tc.in))
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, recordCmp); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// Rewriting keeps everything, including unknown keys.
			data, err := Marshal(got)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			again, err := Unmarshal(data)
			if err != nil {
				t.Fatalf("Unmarshal(Marshal): %v\n%s", err, data)
			}
			if diff := cmp.Diff(got, again, recordCmp); diff != "" {
				t.Errorf("rewrite changed the record (-first +second):\n%s", diff)
			}
		})
	}
}

func TestUnmarshalErrors(t *testing.T) {
	tests := []struct {
		name, in string
		line     int
		msg      string
	}{
		{"empty", "", 0, "snapshot name"},
		{"no name", "description = \"x\"\n", 0, "snapshot name"},
		{"unterminated string", "name = \"n\"\ndescription = \"abc\n", 2, "newline inside a string"},
		{"unterminated at eof", "name = \"n", 1, "unterminated string"},
		{"bad escape", "name = \"a\\qb\"", 1, `unknown escape \'q'`},
		{"octal escape", "name = \"a\\101\"", 1, "unknown escape"},
		{"short hex", "name = \"a\\x4\"", 1, "two hex digits"},
		{"missing equals", "name \"n\"", 1, "want '='"},
		{"uppercase key", "Name = \"n\"", 1, "where a setting should start"},
		{"key then eof", "name", 1, "end of file"},
		{"missing value", "name =", 1, "missing value"},
		{"python", "name = \"n\"\nmemory = -1\n", 2, "where a value should start"},
		{"trailing garbage", "name = \"n\" \"m\"", 1, "after the value"},
		{"plus equals", "name = \"n\"\nlabels += [ ]", 2, "want '='"},
		{"duplicate", "name = \"n\"\n\nname = \"m\"", 3, "set twice"},
		{"duplicate extra", "name = \"n\"\nx = 1\nx = 1", 3, "set twice"},
		{"duplicate disk field", "name = \"n\"\ndisks = 1\ndisk_0_id = 1\ndisk_0_id = 2", 4, "set twice"},
		{"duplicate label", "name = \"n\"\nlabels = [ \"a=1\", \"a=2\" ]", 2, "set twice"},
		{"label without =", "name = \"n\"\nlabels = [ \"a\" ]", 2, "not key=value"},
		{"labels not a list", "name = \"n\"\nlabels = \"a=1\"", 2, "list"},
		{"string is a list", "name = [ \"n\" ]", 1, "want a string"},
		{"number overflow", "name = \"n\"\ndisks = 99999999999999999999999", 2, "larger than"},
		{"too many disks", "name = \"n\"\ndisks = 1025", 2, "larger than"},
		{"disk beyond count", "name = \"n\"\ndisks = 1\ndisk_1_id = \"x\"", 0, "disks = 1"},
		{"bad number", "name = \"n\"\ndowntime_ns = 12ab", 2, "want a number"},
		{"removed 2", "name = \"n\"\ndisks = 1\ndisk_0_removed = 2", 3, "larger than 1"},
		{"bad time", "name = \"n\"\ncreation_time = \"yesterday\"", 2, "RFC 3339"},
		{"epoch disagrees", "name = \"n\"\ncreation_time = \"2026-01-01T00:00:00Z\"\ncreation_time_epoch = 5", 3, "disagrees"},
		{"version 0", "format_version = 0\nname = \"n\"", 1, "at least 1"},
		{"bad name", "name = \"../x\"", 0, "invalid snapshot name"},
		{"self parent", "name = \"n\"\nparent = \"n\"", 0, "own parent"},
		{"unterminated list", "name = \"n\"\nx = [ 1,\n 2\n", 4, "unterminated list"},
		{"list missing comma", "name = \"n\"\nx = [ 1 2 ]", 2, "in a list"},
		{"list leading comma", "name = \"n\"\nx = [ , ]", 2, "where a value should start"},
		{"deep list", "name = \"n\"\nx = " + strings.Repeat("[", 20) + strings.Repeat("]", 20), 2, "nested deeper"},
		{"carriage return", "name = \"n\"\r\n", 1, "after the value"},
		{"nul outside string", "name = \"n\"\x00", 1, "byte 0x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Unmarshal([]byte(tc.in))
			if err == nil {
				t.Fatalf("Unmarshal(%q) = %+v, want an error", tc.in, r)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v (%T), want *CorruptError wrapping ErrCorrupt", err, err)
			}
			if ce.Line != tc.line {
				t.Errorf("line = %d, want %d (%v)", ce.Line, tc.line, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %q, want it to mention %q", err, tc.msg)
			}
		})
	}
}

func TestMarshalLayout(t *testing.T) {
	r := &Record{
		Name:         "before upgrade",
		Description:  "tab\there \"quoted\" ünïcode \u2028 bad\xff",
		CreationTime: time.Date(2026, 11, 26, 7, 0, 0, 123456789, time.FixedZone("CET", 3600)),
		State:        "running",
		Status:       StatusOK,
		Memory:       Memory{Kind: "internal", Node: "drive0"},
		Disks:        []Disk{{Device: "virtio0", Kind: "internal", ID: "1", Tag: "before upgrade", VMStateSize: 42, VMClock: time.Second}},
		Labels:       map[string]string{"z": "1", "a": "2"},
		Config:       []byte("name = 'vm'\n"),
		Extra:        map[string]string{"zz": "1", "aa": `"x"`},
	}
	data, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `# Snapshot metadata (xl config syntax). Edit with care: the store checks every value.
format_version = 1
name = "before upgrade"
description = "tab\there \"quoted\" ünïcode \xE2\x80\xA8 bad\xFF"
creation_time = "2026-11-26T06:00:00.123456789Z"
creation_time_epoch = 1795672800
state = "running"
status = "ok"
memory = "internal"
memory_node = "drive0"
labels = [ "a=2", "z=1" ]
disks = 1
disk_0_device = "virtio0"
disk_0_kind = "internal"
disk_0_id = "1"
disk_0_tag = "before upgrade"
disk_0_vm_state_size = 42
disk_0_vm_clock_ns = 1000000000
config = "name = 'vm'\n"
aa = "x"
zz = 1
`
	if diff := cmp.Diff(want, string(data)); diff != "" {
		t.Errorf("Marshal layout (-want +got):\n%s", diff)
	}
}

func TestQuotedRoundTripsEveryByte(t *testing.T) {
	var all []byte
	for i := 0; i < 256; i++ {
		all = append(all, byte(i))
	}
	inputs := []string{"", string(all), "\xe2\x80", "\xf0\x9f\x98\x80\xf0\x9f", "\\x41", `\"`, "\U0010FFFF\uFFFD\uFEFF"}
	for _, s := range inputs {
		q := appendQuoted(nil, s)
		if strings.ContainsAny(string(q), "\n\r\x00") {
			t.Errorf("quoted %q contains a raw control character: %q", s, q)
		}
		p := xlParser{data: q, line: 1}
		got, err := p.quoted('"')
		if err != nil {
			t.Errorf("quoted(%q) = %q does not parse: %v", s, q, err)
			continue
		}
		if got != s || p.pos != len(q) {
			t.Errorf("quoted round trip of %q via %q = %q", s, q, got)
		}
	}
}

func TestParseCurrent(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{string(marshalCurrent("snap one")), "snap one", false},
		{"", "", false},
		{"current = \"\"\n", "", false},
		{"other = 1\ncurrent = 'x'\n", "x", false},
		{"current = \"../x\"\n", "", true},
		{"current = \"a\"\ncurrent = \"b\"\n", "", true},
		{"current = [ ]\n", "", true},
		{"current = \"a\n", "", true},
	}
	for _, tc := range tests {
		got, err := parseCurrent([]byte(tc.in))
		if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("parseCurrent(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseUTCTimeMatchesTimeParse(t *testing.T) {
	inputs := []string{
		"2026-11-26T07:00:00.123456789Z", "2026-11-26T07:00:00Z", "2026-11-26T07:00:00.5Z", "0000-01-01T00:00:00Z",
		"9999-12-31T23:59:59.999999999Z", "2024-02-29T12:00:00Z", "2023-02-29T12:00:00Z", "2026-13-01T00:00:00Z",
		"2026-11-26T24:00:00Z", "2026-11-26T07:00:60Z", "2026-11-26T07:00:00.Z", "2026-11-26T07:00:00.1234567890Z",
		"2026-11-26T07:00:00+01:00", "2026-11-26 07:00:00Z", "2026-1x-26T07:00:00Z", "2026-11-26T07:00:00.12a4Z",
		"2026-11-26T07:00:00.000000000Z", "2026-11-26t07:00:00z",
		"1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2400-02-29T00:00:00Z",
		"2026-04-31T00:00:00Z", "2026-06-30T00:00:00Z", "2026-01-00T00:00:00Z", "2026-12-32T00:00:00Z",
	}
	// Every day of a few years around the edges, and random instants.
	for _, y := range []int{0, 1, 3, 4, 99, 100, 399, 400, 1969, 1970, 2000, 2024, 2100, 9999} {
		for d := time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() == y; d = d.AddDate(0, 0, 1) {
			inputs = append(inputs, d.Format(time.RFC3339Nano))
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 2000; i++ {
		inputs = append(inputs, time.Unix(rng.Int64N(253402300800+62167219200)-62167219200, rng.Int64N(1e9)).UTC().Format(time.RFC3339Nano))
	}
	for _, s := range inputs {
		want, werr := time.Parse(time.RFC3339Nano, s)
		got, ok := parseUTCTime(s)
		if ok && (werr != nil || got != want.UTC()) {
			t.Errorf("parseUTCTime(%q) = %v; time.Parse = %v, %v", s, got, want, werr)
		}
		if !ok && werr == nil && strings.HasSuffix(s, "Z") && strings.Count(s, ".") <= 1 && len(s) <= 30 {
			t.Errorf("parseUTCTime(%q) left to time.Parse", s)
		}
		full, err := parseTime(s)
		if (err == nil) != (werr == nil) || err == nil && !full.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v; time.Parse = %v, %v", s, full, err, want, werr)
		}
	}
}

func TestFileNameMatches(t *testing.T) {
	names := []string{"a", "a b", "100%", "%25", "ünï", "x.y_z-w", "a:b", "quote\"", "snapshotdata-x"}
	for _, n := range names {
		for _, m := range names {
			if got, want := fileNameMatches(n, RecordFileName(m)), n == m; got != want {
				t.Errorf("fileNameMatches(%q, RecordFileName(%q)) = %v, want %v", n, m, got, want)
			}
		}
	}
	for _, fn := range []string{"", "snapshotdata-.xl", "snapshotdata-a.x", "xsnapshotdata-a.xl", "snapshotdata-a%2.xl"} {
		if fileNameMatches("a", fn) {
			t.Errorf("fileNameMatches(a, %q) = true", fn)
		}
	}
}
