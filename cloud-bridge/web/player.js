// Spotter viewer page: player (being written).
export {};
