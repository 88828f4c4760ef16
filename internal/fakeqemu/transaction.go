package fakeqemu

import (
	"encoding/json"
	"fmt"
	"os"
)

// isTransactionAction reports whether QEMU 7.2's transaction accepts
// the action type; the fake simulates the snapshot ones and "abort".
func isTransactionAction(t string) bool {
	switch t {
	case "abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove",
		"block-dirty-bitmap-clear", "block-dirty-bitmap-enable",
		"block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
		"blockdev-backup", "blockdev-snapshot",
		"blockdev-snapshot-internal-sync", "blockdev-snapshot-sync", "drive-backup":
		return true
	}
	return false
}

type txAction struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// cmdTransaction applies every action to a copy of the block graph and
// commits the copy only when all succeed, so a failed transaction leaves
// no snapshot behind, as QEMU's prepare/abort does.
func cmdTransaction(s *Server, x *call) (any, *qerr) {
	var a struct {
		Actions    []txAction     `json:"actions"`
		Properties map[string]any `json:"properties"`
	}
	if e := x.decode(&a, "actions"); e != nil {
		return nil, e
	}
	type parsed struct {
		typ      string
		internal internalSnapshotArgs
		external externalSnapshotArgs
	}
	var acts []parsed
	for _, act := range a.Actions {
		if !isTransactionAction(act.Type) {
			return nil, generic("Parameter 'type' does not accept value '%s'", act.Type)
		}
		p := parsed{typ: act.Type}
		sub := &call{c: x.c, name: act.Type, args: act.Data}
		var e *qerr
		switch act.Type {
		case "blockdev-snapshot-internal-sync":
			e = sub.decode(&p.internal, "device", "name")
		case "blockdev-snapshot-sync":
			e = sub.decode(&p.external, "snapshot-file")
		case "abort":
			e = sub.decode(nil)
		default:
			e = generic("fakeqemu does not simulate transaction action '%s'", act.Type)
		}
		if e != nil {
			return nil, e
		}
		acts = append(acts, p)
	}
	work := s.blk.clone()
	var overlays []string
	for _, p := range acts {
		var e *qerr
		switch p.typ {
		case "abort":
			e = generic("Transaction aborted using Abort action")
		case "blockdev-snapshot-internal-sync":
			if e = s.matchFault(x.name, p.typ, p.internal.Device); e == nil {
				e = s.internalSnapshot(work, p.internal.Device, p.internal.Name)
			}
		case "blockdev-snapshot-sync":
			if e = s.matchFault(x.name, p.typ, p.external.target()); e == nil {
				e = s.externalSnapshot(work, p.external)
				overlays = append(overlays, p.external.SnapshotFile)
			}
		}
		if e != nil {
			return nil, e
		}
	}
	if e := s.createOverlayFiles(overlays); e != nil {
		return nil, e
	}
	s.blk = work
	return struct{}{}, nil
}

// createOverlayFiles creates placeholder overlay files when
// Options.CreateOverlays asks for them.
func (s *Server) createOverlayFiles(paths []string) *qerr {
	if !s.opts.CreateOverlays {
		return nil
	}
	for _, p := range paths {
		if err := os.WriteFile(p, []byte(fmt.Sprintf("fakeqemu overlay %s\n", p)), 0o644); err != nil {
			return generic("Could not create '%s': %v", p, err)
		}
	}
	return nil
}
