package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name   string
		reason string // "" means accepted
	}{
		{"1397207577", ""},
		{"a..b", ""},
		{"with space", ""},
		{"ünïcødé 日本", ""},
		{"100%", ""},
		{strings.Repeat("x", store.MaxNameLen), ""},
		{"", "empty"},
		{".", "starts with '.'"},
		{"..", "starts with '.'"},
		{".hidden", "starts with '.'"},
		{"a/b", "contains '/'"},
		{"../../etc/passwd", "starts with '.'"},
		{"x/../../etc", "contains '/'"},
		{"nul\x00", "non-printable character U+0000"},
		{"esc\x1b[31m", "non-printable character U+001B"},
		{"line\nbreak", "non-printable character U+000A"},
		{"del\x7f", "non-printable character U+007F"},
		{"c1\u0085", "non-printable character U+0085"},
		{"nbsp\u00a0", "non-printable character U+00A0"},
		{"rtl\u202eevil", "non-printable character U+202E"},
		{" lead", "starts or ends with a space"},
		{"trail ", "starts or ends with a space"},
		{"bad\xffutf8", "not valid UTF-8"},
		{strings.Repeat("x", store.MaxNameLen+1), "longer than 64 bytes"},
		{strings.Repeat("é", store.MaxNameLen/2+1), "longer than 64 bytes"},
	}
	for _, tc := range tests {
		err := store.ValidateName(tc.name)
		if tc.reason == "" {
			if err != nil {
				t.Errorf("ValidateName(%q) = %v, want nil", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, store.ErrInvalidName) || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName mentioning %q", tc.name, err, tc.reason)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\x00\n\x1b\x7f") {
			t.Errorf("error for %q carries raw control characters: %q", tc.name, err)
		}
	}
}

func TestValidateDomain(t *testing.T) {
	if err := store.ValidateDomain(storetest.DomainA); err != nil {
		t.Errorf("ValidateDomain(%q) = %v", storetest.DomainA, err)
	}
	for _, d := range storetest.BadDomains {
		if err := store.ValidateDomain(d); !errors.Is(err, store.ErrInvalidDomain) {
			t.Errorf("ValidateDomain(%q) = %v, want ErrInvalidDomain", d, err)
		}
	}
}

func TestRecordFileName(t *testing.T) {
	tests := []struct{ name, file string }{
		{"1397207577", "snapshotdata-1397207577.xl"},
		{"a..b", "snapshotdata-a..b.xl"},
		{"with space", "snapshotdata-with%20space.xl"},
		{"100%", "snapshotdata-100%25.xl"},
		{"%25", "snapshotdata-%2525.xl"},
		{"a:b", "snapshotdata-a%3Ab.xl"},
		{"Été", "snapshotdata-Été.xl"},
	}
	for _, tc := range tests {
		if got := store.RecordFileName(tc.name); got != tc.file {
			t.Errorf("RecordFileName(%q) = %q, want %q", tc.name, got, tc.file)
		}
	}
	// Injective and safe over many accepted names, including the worst
	// case for length.
	names := append([]string{}, storetest.GoodNames...)
	for c := 0x20; c < 0x7f; c++ {
		for _, s := range []string{string(rune(c)), "x" + string(rune(c)), "x" + string(rune(c)) + "y", strings.Repeat(string(rune(c)), store.MaxNameLen)} {
			if store.ValidateName(s) == nil {
				names = append(names, s)
			}
		}
	}
	seen := map[string]string{}
	for _, n := range names {
		f := store.RecordFileName(n)
		if other, dup := seen[f]; dup && other != n {
			t.Errorf("names %q and %q share file %q", n, other, f)
		}
		seen[f] = n
		if len(f) > 255 || strings.ContainsAny(f, "/\x00") || f[0] == '.' || f == "." || f == ".." {
			t.Errorf("RecordFileName(%q) = %q is not a safe file name", n, f)
		}
	}
}

func TestRecordName(t *testing.T) {
	for _, name := range append(storetest.GoodNames, "100%", "a b", "ünïcødé 日本") {
		fn := store.RecordFileName(name)
		got, ok := store.RecordName(fn)
		if !ok || got != name {
			t.Errorf("RecordName(%q) = %q, %v; want %q", fn, got, ok, name)
		}
	}
	for _, fn := range []string{
		"", "snapshotdata-.xl", "snapshotdata-a.txt", "other-a.xl", "snapshotdata-a",
		"snapshotdata-%2F.xl",   // '/'
		"snapshotdata-%2e.xl",   // lowercase hex: not the canonical escape
		"snapshotdata-%41.xl",   // 'A' escaped although it is kept
		"snapshotdata-%2.xl",    // short escape
		"snapshotdata-%ZZ.xl",   // not hex
		"snapshotdata-.hid.xl",  // starts with '.'
		"snapshotdata-%00a.xl",  // NUL
		"snapshotdata-%FF.xl",   // not UTF-8
		"snapshotdata-a%20.xl",  // ends with a space
		"snapshotdata-a%25.xl~", // not .xl
	} {
		if got, ok := store.RecordName(fn); ok {
			t.Errorf("RecordName(%q) = %q, true; want false", fn, got)
		}
	}
}
