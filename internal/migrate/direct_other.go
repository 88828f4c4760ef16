//go:build !linux

package migrate

import (
	"errors"
	"os"
)

// openDirect is not implemented outside Linux: no direct I/O.
func openDirect(*os.File, int) (*os.File, error) {
	return nil, errors.New("O_DIRECT is not supported on this system")
}
