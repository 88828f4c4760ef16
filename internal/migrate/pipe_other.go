//go:build !linux

package migrate

import "os"

// setPipeSize does nothing where the pipe capacity cannot be set.
func setPipeSize(*os.File, int) {}
