package qemuimg

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func zero() *int64 { var z int64; return &z }

// ignoreRaw leaves the undecoded format-specific section and the linked
// backing images out of comparisons of one image.
var ignoreRaw = cmpopts.IgnoreFields(Info{}, "FormatSpecific", "BackingImage")

func TestParseCaptured(t *testing.T) {
	intop := Snapshot{ID: "1", Name: "intop", DateSec: 1796082975, DateNsec: 930087000, ICount: zero()}
	for _, tc := range []struct {
		file string
		want Info
	}{
		{"img-info-top.json", Info{
			Filename: "/tmp/cap/top.qcow2", Format: "qcow2", VirtualSize: 64 << 20, ActualSize: 208896, ClusterSize: 65536,
			BackingFilename: "base.qcow2", FullBackingFilename: "/tmp/cap/base.qcow2", BackingFilenameFormat: "qcow2",
			Snapshots: []Snapshot{intop}, Backing: "/tmp/cap/base.qcow2",
		}},
		{"img-info-relative.json", Info{
			Filename: "top.qcow2", Format: "qcow2", VirtualSize: 64 << 20, ActualSize: 208896, ClusterSize: 65536,
			BackingFilename: "base.qcow2", FullBackingFilename: "base.qcow2", BackingFilenameFormat: "qcow2",
			Snapshots: []Snapshot{intop}, Backing: "base.qcow2",
		}},
		{"img-info-raw.json", Info{Filename: "raw.img", Format: "raw", VirtualSize: 16 << 20}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := Parse(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&tc.want, got, ignoreRaw, cmpopts.IgnoreFields(Info{}, "ActualSize")); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSnapshotTimes(t *testing.T) {
	s := Snapshot{DateSec: 1796082975, DateNsec: 930087000, VMClockSec: 3, VMClockNsec: 250_000_000}
	if got, want := s.Date(), time.Unix(1796082975, 930087000); !got.Equal(want) {
		t.Errorf("Date %v, want %v", got, want)
	}
	if got := s.VMClock(); got != 3250*time.Millisecond {
		t.Errorf("VMClock %v, want 3.25s", got)
	}
	in, _ := Parse(readTestdata(t, "img-info-top.json"))
	if got, ok := in.Snapshot("intop"); !ok || got.ID != "1" {
		t.Errorf("Snapshot(intop) = %+v, %v", got, ok)
	}
	if _, ok := in.Snapshot("1"); ok {
		t.Error("Snapshot matched an ID; QEMU matches tags only")
	}
}

func TestParseChainCaptured(t *testing.T) {
	chain, err := ParseChain(readTestdata(t, "img-info-chain.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 {
		t.Fatalf("%d images, want 2", len(chain))
	}
	top, base := chain[0], chain[1]
	if top.BackingImage != base || base.BackingImage != nil {
		t.Errorf("chain not linked top → base: %p %p %p", top.BackingImage, base, base.BackingImage)
	}
	if top.Backing != base.Filename || base.Backing != "" {
		t.Errorf("Backing %q, %q; want %q, \"\"", top.Backing, base.Backing, base.Filename)
	}
	if diff := cmp.Diff([]*Info{top, base}, top.Chain()); diff != "" {
		t.Errorf("Chain (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/tmp/cap/base.qcow2"}, top.BackingFiles()); diff != "" {
		t.Errorf("BackingFiles (-want +got):\n%s", diff)
	}
	if got := base.Snapshots; len(got) != 1 || got[0].Name != "inbase" {
		t.Errorf("base snapshots %+v", got)
	}
	for _, bad := range []string{`[]`, `[null]`, `{}`, `[{"filename": 3}]`} {
		if _, err := ParseChain([]byte(bad)); err == nil {
			t.Errorf("ParseChain(%s) succeeded", bad)
		}
	}
}

// TestBackingResolution covers how Backing is derived, including the
// shapes query-block reports (nested backing-image, a -snapshot overlay
// named json:{...} without backing-filename).
func TestBackingResolution(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"none", `{"filename":"/a/b.qcow2"}`, ""},
		{"relative to the image's directory", `{"filename":"/a/b.qcow2","backing-filename":"c.qcow2"}`, "/a/c.qcow2"},
		{"relative with dots", `{"filename":"/a/x/b.qcow2","backing-filename":"../c.qcow2"}`, "/a/c.qcow2"},
		{"full wins", `{"filename":"/a/b.qcow2","backing-filename":"c.qcow2","full-backing-filename":"/z/c.qcow2"}`, "/z/c.qcow2"},
		{"absolute", `{"filename":"/a/b.qcow2","backing-filename":"/z//c.qcow2"}`, "/z/c.qcow2"},
		{"protocol kept", `{"filename":"/a/b.qcow2","backing-filename":"nbd:localhost:10809"}`, "nbd:localhost:10809"},
		{"json: kept", `{"filename":"/a/b.qcow2","backing-filename":"json:{\"driver\":\"file\"}"}`, `json:{"driver":"file"}`},
		{"image with a protocol", `{"filename":"json:{}","backing-filename":"c.qcow2"}`, "c.qcow2"},
		{"nested only", `{"filename":"json:{}","backing-image":{"filename":"/t/tmp.qcow2"}}`, "/t/tmp.qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := Parse([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if in.Backing != tc.want {
				t.Errorf("Backing %q, want %q", in.Backing, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(`[`)); err == nil {
		t.Error("Parse of broken JSON succeeded")
	}
}

func TestParseCheckCaptured(t *testing.T) {
	var c Check
	if err := json.Unmarshal(readTestdata(t, "img-check.json"), &c); err != nil {
		t.Fatal(err)
	}
	want := Check{Filename: "top.qcow2", Format: "qcow2", ImageEndOffset: 393216, TotalClusters: 1024}
	if diff := cmp.Diff(want, c); diff != "" || !c.Clean() {
		t.Errorf("check (-want +got):\n%s clean=%v", diff, c.Clean())
	}
	if (&Check{Leaks: 1}).Clean() || (&Check{Corruptions: 1}).Clean() || (&Check{CheckErrors: 1}).Clean() {
		t.Error("Clean true with a problem")
	}
}

func TestPlainFilename(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// QEMU 5.2's name of the top image after an external snapshot of a
		// disk whose path holds a comma.
		{`json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/d/base, 1.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/d/data ä,, x.ext.qcow2"}}`, "/d/data ä,, x.ext.qcow2"},
		{"/d/plain.qcow2", "/d/plain.qcow2"},
		{`json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {"type": "unix", "path": "/s"}}}`, `json:{"driver": "qcow2", "file": {"driver": "nbd", "server": {"type": "unix", "path": "/s"}}}`},
		{`json:{"driver": "qcow2", "file": {"driver": "file"}}`, `json:{"driver": "qcow2", "file": {"driver": "file"}}`},
		{"json:{not json", "json:{not json"},
		// A raw slice of a file: the path alone would show the whole file.
		{`json:{"offset": 4096, "driver": "raw", "size": 1048576, "file": {"driver": "file", "filename": "/d/x.raw"}}`, `json:{"offset": 4096, "driver": "raw", "size": 1048576, "file": {"driver": "file", "filename": "/d/x.raw"}}`},
		{`json:{"driver": "qcow2", "file": {"driver": "file", "filename": "/d/x.qcow2", "locking": "off"}}`, `json:{"driver": "qcow2", "file": {"driver": "file", "filename": "/d/x.qcow2", "locking": "off"}}`},
		{`json:{"file": {"driver": "file", "filename": "/d/x.qcow2"}}`, `json:{"file": {"driver": "file", "filename": "/d/x.qcow2"}}`},
		{"nbd:host:10809", "nbd:host:10809"},
	} {
		if got := PlainFilename(tc.in); got != tc.want {
			t.Errorf("PlainFilename(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
