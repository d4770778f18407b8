package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildStatic builds a tiny Go program with CGO_ENABLED=0, as `make build`
// builds vmagent.
func buildStatic(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH: %v", err)
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "go.mod"), "module hello\n\ngo 1.26\n")
	write(t, filepath.Join(dir, "main.go"), "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n")
	out := filepath.Join(dir, "hello")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

func TestCheck(t *testing.T) {
	static := buildStatic(t)
	notELF := filepath.Join(t.TempDir(), "script.sh")
	write(t, notELF, "#!/bin/sh\necho hi\n")

	tests := []struct {
		name    string
		path    string
		wantErr []string // parts of the error; none for a static file
		system  bool     // a file of this machine, which may be absent
	}{
		{name: "static Go binary", path: static},
		{name: "dynamically linked /bin/ls", path: "/bin/ls",
			wantErr: []string{"/bin/ls is not static", "program interpreter", "libc.so", "CGO_ENABLED=0"}, system: true},
		{name: "not an ELF file", path: notELF,
			wantErr: []string{notELF, "want a Linux ELF executable"}},
		{name: "missing file", path: filepath.Join(t.TempDir(), "absent"),
			wantErr: []string{"absent", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := os.Stat(tt.path); err != nil && tt.system {
				t.Skipf("no %s here: %v", tt.path, err)
			}
			err := check(tt.path)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want one containing %q", tt.wantErr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got %q, want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestRunReportsEveryFile(t *testing.T) {
	static := buildStatic(t)
	if _, err := os.Stat("/bin/ls"); err != nil {
		t.Skipf("no /bin/ls here: %v", err)
	}
	var out bytes.Buffer
	err := run(&out, []string{static, "/bin/ls", static})
	if got, want := out.String(), "static: "+static+"\nstatic: "+static+"\n"; got != want {
		t.Errorf("output: got %q, want %q", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "/bin/ls is not static") {
		t.Errorf("error: got %v, want one naming /bin/ls", err)
	}
	if err := run(&out, []string{static}); err != nil {
		t.Errorf("static only: got %v, want no error", err)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
