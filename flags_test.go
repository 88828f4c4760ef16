package vmsnap_test

import (
	"errors"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

func TestFlagStrings(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{vmsnap.CreateFlags(0).String(), "0"},
		{(vmsnap.External | vmsnap.Live).String(), "External|Live"},
		{(vmsnap.Halt | vmsnap.CreateFlags(1<<9)).String(), "Halt|0x200"},
		{vmsnap.RevertForce.String(), "RevertForce"},
		{(vmsnap.DeleteChildren | vmsnap.DeleteMetadataOnly).String(), "DeleteChildren|DeleteMetadataOnly"},
		{(vmsnap.ListRoots | vmsnap.ListExternal).String(), "ListRoots|ListExternal"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q, want %q", tc.got, tc.want)
		}
	}
}

// The sentinels that mean the same thing in the store and the engine are
// the same values, so errors.Is works across the layers.
func TestSentinelsShared(t *testing.T) {
	for _, tc := range []struct {
		name        string
		engine, str error
	}{
		{"NotFound", vmsnap.ErrNotFound, store.ErrNotFound},
		{"Exists", vmsnap.ErrExists, store.ErrExists},
		{"InvalidName", vmsnap.ErrInvalidName, store.ErrInvalidName},
		{"InvalidDomain", vmsnap.ErrInvalidDomain, store.ErrInvalidDomain},
		{"Busy", vmsnap.ErrBusy, store.ErrBusy},
	} {
		if tc.engine != tc.str || !errors.Is(tc.str, tc.engine) {
			t.Errorf("%s: vmsnap and store sentinels differ", tc.name)
		}
	}
}
