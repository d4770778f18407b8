// Package crd holds the MeshVM CustomResourceDefinition that controller-gen
// writes from the v1alpha1 types (make generate), for hostctl to apply.
package crd

import _ "embed"

// MeshVMs is the CustomResourceDefinition of meshvms.meshvm.io, as YAML.
//
//go:embed meshvm.io_meshvms.yaml
var MeshVMs []byte
