package launch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// inspectImage asks qemu-img (bin) for file's format and backing file,
// and checks that its whole backing chain opens.
func inspectImage(ctx context.Context, bin, file string) (image, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return image{}, err
	}
	if bin == "" {
		bin = "qemu-img"
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "info", "-U", "--backing-chain", "--output=json", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return image{}, fmt.Errorf("%s info %s: %w: %s", bin, file, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var chain []struct {
		Format        string `json:"format"`
		FullBacking   string `json:"full-backing-filename"`
		Backing       string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
		VirtualSize   int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &chain); err != nil || len(chain) == 0 {
		return image{}, fmt.Errorf("%s info %s: unexpected output: %v", bin, file, err)
	}
	top := chain[0]
	img := image{File: file, Format: top.Format, BackingFormat: top.BackingFormat, Device: fi.Mode()&os.ModeDevice != 0}
	if top.FullBacking != "" {
		img.Backing = filepath.Clean(top.FullBacking)
	} else if top.Backing != "" {
		img.Backing = absPath(file, top.Backing)
	}
	return img, nil
}
