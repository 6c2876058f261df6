// Package api holds the OpenAPI 3 description of the HTTP API of `cordon
// serve` (openapi.json); internal/api serves it at /api/v1/openapi.json and
// its tests check it against the server's routes and status codes.
package api

import _ "embed"

// OpenAPI is openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte
