// Spotter viewer page: cards (being written).
export {};
