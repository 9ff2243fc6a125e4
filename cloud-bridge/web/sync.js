// Spotter viewer page: sync (being written).
export {};
