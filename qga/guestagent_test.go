package qga_test

import (
	"go/build"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/qga"
)

// An *Agent is what vmsnap's Quiesce flag needs. The assertion lives in a
// test so that package qga does not import the engine.
var _ vmsnap.GuestAgent = (*qga.Agent)(nil)

// TestNoEngineImport keeps package qga a leaf: a toolstack can use the
// agent client without linking the snapshot engine.
func TestNoEngineImport(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if imp == "github.com/vmsnap/vmsnap" {
			t.Errorf("package qga imports the engine %s", imp)
		}
	}
}
