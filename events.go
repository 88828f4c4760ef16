package vmsnap

// Event is one thing an operation did that a toolstack may want to know,
// delivered to Options.Events. (Placeholder: the full type is defined with
// the events work.)
type Event struct {
	// Op is the operation ("create", "revert", ...).
	Op string
	// Snapshot is the snapshot concerned.
	Snapshot string
	// Phase is the phase entered.
	Phase Phase
}
