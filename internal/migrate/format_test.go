package migrate

import (
	"errors"
	"testing"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

func features(version qmp.Version, caps ...string) *qmp.Features {
	f := &qmp.Features{Version: version, Commands: map[string]bool{"add-fd": true, "remove-fd": true, "getfd": true}, MigrationCapabilities: map[string]bool{}}
	for _, c := range caps {
		f.MigrationCapabilities[c] = false
	}
	return f
}

func TestFormats(t *testing.T) {
	q72 := features(qmp.Version{Major: 7, Minor: 2}, capBackgroundSnapshot, capPauseBeforeSwitchover, capMultifd)
	q10 := features(qmp.Version{Major: 10}, capBackgroundSnapshot, capPauseBeforeSwitchover, capMultifd, capMappedRAM)
	for _, tc := range []struct {
		label string
		want  Format
		err   bool
	}{{"", FormatStream, false}, {"stream", FormatStream, false}, {"mapped-ram", FormatMappedRAM, false}, {"parallel", "", true}} {
		got, err := ParseFormat(tc.label)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ParseFormat(%q) = %q, %v", tc.label, got, err)
		}
	}
	if err := CanLoad(q72, FormatMappedRAM); !errors.Is(err, sentinel.ErrUnsupported) {
		t.Errorf("CanLoad(7.2, mapped-ram) = %v", err)
	}
	for _, f := range []*qmp.Features{q72, q10} {
		if err := CanLoad(f, FormatStream); err != nil {
			t.Errorf("CanLoad(%s, stream) = %v", f.Version, err)
		}
	}
	if err := CanLoad(q10, FormatMappedRAM); err != nil {
		t.Errorf("CanLoad(10.0, mapped-ram) = %v", err)
	}
	if err := CanSave(q10, Background, FormatMappedRAM); !errors.Is(err, sentinel.ErrUnsupported) {
		t.Errorf("CanSave(background, mapped-ram) = %v", err)
	}
	for _, tc := range []struct {
		feat *qmp.Features
		mode Mode
		want Format
	}{
		{q72, Stopped, FormatStream}, {q72, Precopy, FormatStream}, {q72, Background, FormatStream},
		{q10, Stopped, FormatMappedRAM}, {q10, Precopy, FormatMappedRAM}, {q10, Background, FormatStream},
	} {
		if got := DefaultFormat(tc.feat, tc.mode); got != tc.want {
			t.Errorf("DefaultFormat(%s, %v) = %s, want %s", tc.feat.Version, tc.mode, got, tc.want)
		}
	}
	if tr := chooseTransport(q72.MigrationCapabilities, FormatStream); tr.name() != "fd" {
		t.Errorf("7.2 streams over %s", tr.name())
	}
	if tr := chooseTransport(q10.MigrationCapabilities, FormatStream); tr.name() != "file" {
		t.Errorf("10.0 streams over %s", tr.name())
	}
}

func TestWriteProtected(t *testing.T) {
	info := func(status string, total, remaining uint64) migrationInfo {
		i := migrationInfo{Status: status}
		i.RAM = &struct {
			Total       uint64 `json:"total"`
			Remaining   uint64 `json:"remaining"`
			Transferred uint64 `json:"transferred"`
		}{Total: total, Remaining: remaining}
		return i
	}
	for _, tc := range []struct {
		info migrationInfo
		want bool
	}{
		{migrationInfo{Status: statusSetup}, false},
		{info(statusActive, 100, 100), false},
		{info(statusActive, 100, 99), true},
		{info(statusCompleted, 100, 0), false},
		{info(statusActive, 0, 0), false},
	} {
		if got := writeProtected(tc.info); got != tc.want {
			t.Errorf("writeProtected(%+v) = %v", tc.info, got)
		}
	}
	if contAllowed(statusActive, false) || !contAllowed(statusActive, true) {
		t.Error("cont while active: allowed only once memory is protected")
	}
}
